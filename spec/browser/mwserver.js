'use strict';
// The server helper is shared with the Node client tests.
module.exports = require('../clients/node/mwserver');
