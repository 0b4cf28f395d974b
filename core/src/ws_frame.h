/* WebSocket frame codec (RFC 6455 section 5): a sans-I/O, resumable parser
 * for the frames a peer sends, and encoders for the frames we send.
 *
 * The parser works in place over the caller's buffer: it unmasks payload
 * bytes where they lie and hands back pointers into that buffer, so a message
 * that arrives in one read is never copied by the codec. It validates
 * everything RFC 6455 makes a protocol error, UTF-8 of text messages
 * (incrementally, failing fast) and the message size limit, and never
 * allocates. */
#ifndef MW_WS_FRAME_H
#define MW_WS_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum {
    MW_WS_OP_CONT = 0x0,
    MW_WS_OP_TEXT = 0x1,
    MW_WS_OP_BINARY = 0x2,
    MW_WS_OP_CLOSE = 0x8,
    MW_WS_OP_PING = 0x9,
    MW_WS_OP_PONG = 0xA,
};

/* Close codes used by the core (RFC 6455 7.4.1). */
enum {
    MW_WS_CLOSE_NORMAL = 1000,
    MW_WS_CLOSE_GOING_AWAY = 1001,
    MW_WS_CLOSE_PROTOCOL = 1002,
    MW_WS_CLOSE_UNSUPPORTED = 1003,
    MW_WS_CLOSE_NO_STATUS = 1005, /* never sent; reported when a close had no code */
    MW_WS_CLOSE_ABNORMAL = 1006,  /* never sent; reported after an abrupt drop */
    MW_WS_CLOSE_INVALID_DATA = 1007,
    MW_WS_CLOSE_POLICY = 1008,
    MW_WS_CLOSE_TOO_BIG = 1009,
    MW_WS_CLOSE_INTERNAL = 1011,
};

/* Largest frame header: 2 bytes + 8 length bytes + 4 mask bytes. */
#define MW_WS_MAX_HEADER 14
/* RFC 6455 5.5: control frame payloads are at most 125 bytes. */
#define MW_WS_MAX_CONTROL 125

/* Resumable parser state. Zero it, then set the configuration fields. */
typedef struct mw_ws_parser {
    /* configuration */
    uint64_t max_message_size; /* payload bytes per message; 0 = unlimited */
    uint8_t server;            /* 1: frames must be masked (we are the server);
                                  0: frames must not be masked (we are a client) */
    uint8_t rsv1_allowed;      /* 1 when an extension (permessage-deflate) gave RSV1 a
                                  meaning: allowed on the first frame of a data message */
    /* state */
    uint64_t remaining;  /* payload bytes left in the current data frame */
    uint64_t msg_len;    /* payload bytes of the current message so far */
    uint32_t utf8;       /* UTF-8 state of the current text message */
    uint8_t mask[4];     /* masking key of the current data frame */
    uint8_t mask_off;    /* position in mask of the next payload byte (0..3) */
    uint8_t in_frame;    /* 1 while inside a data frame's payload */
    uint8_t frame_fin;   /* FIN bit of the current data frame */
    uint8_t msg_opcode;  /* TEXT or BINARY while a message is in progress, else 0 */
    uint8_t msg_rsv1;    /* RSV1 of the first frame of the message in progress */
    uint8_t msg_started; /* 1 once the first chunk of the current message was emitted */
    uint8_t msg_text;    /* 1: uncompressed text, its UTF-8 checked chunk by chunk */
} mw_ws_parser_t;

enum {
    MW_WS_EV_NONE = 0, /* nothing to report: need more bytes, or only a header was consumed */
    MW_WS_EV_DATA,     /* a chunk of a data message's payload */
    MW_WS_EV_CONTROL,  /* one complete control frame */
};

typedef struct mw_ws_event {
    int type;       /* MW_WS_EV_* */
    uint8_t opcode; /* DATA: TEXT or BINARY of the message; CONTROL: CLOSE, PING or PONG */
    uint8_t first;  /* DATA: this is the first chunk of the message */
    uint8_t last;   /* DATA: this chunk completes the message */
    uint8_t rsv1;   /* DATA: RSV1 of the message's first frame (compressed) */
    uint8_t *data;  /* payload, unmasked in place; points into the caller's buffer */
    size_t len;     /* payload length (may be 0) */
    /* on error (negative return): */
    uint16_t close_code; /* the close code to send: 1002, 1007 or 1009 */
    const char *error;   /* static text naming the rule that was broken */
} mw_ws_event_t;

/* Parses the next piece of buf[0..len), which must start where the previous
 * call stopped consuming. Returns the number of bytes consumed (0..len) and
 * fills *ev, or a negative MW_E* code with ev->close_code and ev->error set
 * (MW_EPROTO -> 1002, MW_EUTF8 -> 1007, MW_ETOOBIG -> 1009); after an error
 * the parser must not be used again.
 *
 * Returns 0 with MW_WS_EV_NONE when buf does not hold a whole frame header,
 * or not a whole control frame (header and payload, at most 131 bytes): the
 * caller keeps those bytes and calls again with more appended. Data frame
 * payloads are delivered in chunks as they arrive: one call consumes a
 * header and/or up to the rest of the current frame's payload. Empty data
 * frames are reported as empty chunks. A chunk's data is unmasked in place
 * (buf is modified). Size limits are checked on the frame header, so a frame
 * that would make its message exceed max_message_size fails before any of its
 * payload is read. */
ssize_t mw__ws_parse(mw_ws_parser_t *p, uint8_t *buf, size_t len, mw_ws_event_t *ev);

/* A whole message of one frame, as mw__ws_parse_whole reports it. */
typedef struct mw_ws_whole {
    const uint8_t *data; /* unmasked in place, in the caller's buffer */
    size_t len;
    int binary;
} mw_ws_whole_t;

/* The common case of a server's read in one call: parses the whole,
 * unfragmented, masked text and binary frames of at most 125 payload bytes
 * (no RSV bit, within max_message_size) at the start of buf, at most max of
 * them, into out (*count of them), and returns the bytes they took. It stops
 * at the first frame of any other kind, or one not wholly in buf, and
 * leaves it to mw__ws_parse; the parser's state is unchanged (between
 * messages), so the two can be mixed freely. A text frame that is not UTF-8
 * fails as mw__ws_parse would: a negative MW_EUTF8 with ev set, and the
 * frames before it in out (*count). Outside that case (a client's parser, or
 * a fragmented message in progress) it parses nothing. */
ssize_t mw__ws_parse_whole(mw_ws_parser_t *p, uint8_t *buf, size_t len, mw_ws_whole_t *out,
                           size_t max, size_t *count, mw_ws_event_t *ev);

/* Checks a close frame's payload (RFC 6455 5.5.1, 7.1.5, 7.4). Returns 0 and
 * sets *code (1005 when the payload is empty) if it is valid; returns 1002
 * for a 1-byte payload or a code that may not be sent (below 1000, 1004,
 * 1005, 1006, 1015, 1016..2999, 5000 and up), 1007 when the reason is not
 * UTF-8. */
int mw__ws_close_check(const uint8_t *payload, size_t len, uint16_t *code);

/* True for close codes an endpoint may send in a close frame. */
int mw__ws_close_code_valid(unsigned code);

/* Writes an unmasked (server-to-client) frame header for a payload of len
 * bytes into out. Returns the header length (2, 4 or 10). */
size_t mw__ws_header(uint8_t out[MW_WS_MAX_HEADER], int fin, int rsv1, int opcode, uint64_t len);

/* Writes a masked (client-to-server) frame header with the given key.
 * Returns the header length (6, 8 or 14). The payload must be masked
 * separately with mw__ws_mask. */
size_t mw__ws_header_masked(uint8_t out[MW_WS_MAX_HEADER], int fin, int rsv1, int opcode,
                            uint64_t len, const uint8_t mask[4]);

/* XORs p[0..len) with the masking key, starting at key position off (0..3),
 * a machine word at a time where alignment allows. Returns the key position
 * after the last byte ((off + len) % 4). Masking twice restores the data. */
unsigned mw__ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], unsigned off);

#endif
