/* Label tables for the counters of stats.h. */
#include "stats.h"

const uint16_t mw__stats_codes[MW_STATS_CODES] = {0,    1000, 1001, 1002, 1003, 1005,
                                                  1006, 1007, 1008, 1009, 1011, 4000};
const uint16_t mw__stats_refusals[MW_STATS_REFUSALS] = {0,   400, 401, 403, 404, 405,
                                                        408, 426, 429, 431, 500, 503};

int mw__stats_code_index(unsigned code)
{
    for (int i = 1; i < MW_STATS_CODES; i++)
        if (mw__stats_codes[i] == code)
            return i;
    return 0;
}

int mw__stats_refusal_index(unsigned status)
{
    for (int i = 1; i < MW_STATS_REFUSALS; i++)
        if (mw__stats_refusals[i] == status)
            return i;
    return 0;
}
