/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Validation of every vfio-user message the broker's server accepts: pure functions over bytes already
 * received, no I/O, so they are unit-tested and fuzzed on their own.
 *
 * Two kinds of failure. A *malformed* message (a size that does not add up, argsz that lies, fds where
 * none belong or in the wrong number, a reply or a server-to-client command sent to the server, a
 * protocol version the broker does not speak) leaves the stream in a state nobody can trust: the server
 * logs the reason and disconnects that client. A well-formed request the device or the broker refuses
 * (unknown command, bad flags, a zero size) gets an error reply with the errno and the session goes on. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vfio-user-protocol.h"

/* What the broker accepts from a client; announced in its VERSION reply. */
#define VFIO_USER_SERVER_MAX_MSG_FDS        16            /* QEMU's client sends at most 16 */
#define VFIO_USER_SERVER_MAX_DATA_XFER_SIZE (UINT64_C(1) << 20)
#define VFIO_USER_SERVER_MAX_VERSION_DATA   4096          /* the capabilities JSON */
/* The largest message: a REGION_WRITE of max_data_xfer_size bytes. */
#define VFIO_USER_SERVER_MAX_MSG_SIZE \
        ((uint32_t) (sizeof(VfioUserHeader) + sizeof(VfioUserRegionAccess) + VFIO_USER_SERVER_MAX_DATA_XFER_SIZE))

typedef struct VfioUserProblem {
        bool fatal;        /* malformed: disconnect the client */
        char reason[200];  /* for the log */
} VfioUserProblem;

/* The client's capabilities from its VERSION message, defaults filled in. */
typedef struct VfioUserCapabilities {
        uint32_t max_msg_fds;
        uint64_t max_data_xfer_size;
        uint64_t pgsizes;
        uint32_t max_dma_maps;
        bool twin_socket;    /* offered; the broker never sends commands, so it never enables it */
        bool write_multiple; /* offered; the broker does not announce it, so QEMU never uses it */
} VfioUserCapabilities;

typedef struct VfioUserRequest {
        VfioUserHeader header;
        size_t n_fds;
        union {
                struct {
                        uint16_t major, minor;
                        VfioUserCapabilities capabilities;
                } version;
                VfioUserDmaMap dma_map;
                VfioUserDmaUnmap dma_unmap;
                VfioUserDeviceInfo device_info;
                VfioUserRegionInfo region_info;
                VfioUserIrqInfo irq_info;
                struct {
                        VfioUserIrqSet set;
                        const uint8_t *bools; /* count entries with DATA_BOOL, else NULL; points into the payload */
                } irq_set;
                struct {
                        VfioUserRegionAccess access;
                        const uint8_t *data;  /* count bytes for a write, else NULL; points into the payload */
                } region;
        };
} VfioUserRequest;

/* Checks a received header before its payload is read: a command (not a reply), known flag bits only, a
 * size between the header's and VFIO_USER_SERVER_MAX_MSG_SIZE. Every failure is fatal. Returns 0 or
 * -EBADMSG. */
int vfio_user_header_check(const VfioUserHeader *h, VfioUserProblem *p);

/* Parses and validates one whole command: header h (checked), payload_size bytes of payload, n_fds fds
 * received with it. Returns 0 and fills *ret; or a negative errno with p->fatal telling whether the
 * client must be disconnected (else the errno goes back in an error reply). */
int vfio_user_request_parse(const VfioUserHeader *h, const uint8_t *payload, size_t payload_size, size_t n_fds,
                            VfioUserRequest *ret, VfioUserProblem *p);

/* The capabilities JSON of the broker's VERSION reply (NUL-terminated, malloc'ed): a subset of what the
 * client proposed, with the broker's own limits. NULL on OOM. */
char *vfio_user_version_reply_json(uint64_t pgsizes, uint32_t max_dma_maps);

const char *vfio_user_command_name(uint16_t command);
