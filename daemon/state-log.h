/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The state log: every container's state as an append-only log of fixed 64-byte records in a memfd
 * that lives in the service manager's fd store (FDNAME state-<generation>) and that the daemon keeps
 * mapped MAP_SHARED. A change costs a few records, never a rewrite; the pages belong to the memfd, so
 * a daemon that dies loses nothing it wrote.
 *
 * Crash consistency without fsync or locks: a record is written whole, with a CRC-32 of its 64
 * bytes, *after* the header's commit count; only then is the count raised past it (one aligned 64-bit
 * store with release order, which a dying process cannot tear). A request appends its records and
 * commits once at its end, before the reply, so the next instance sees every acknowledged request and
 * each unacknowledged one wholly or not at all. A committed record with a bad CRC or of an unknown
 * type is corruption: the whole log is refused.
 *
 * Records: HEAD (followed by BLOB continuations) carries a container's small state as JSON without
 * regions and mappings (owner, uid, label, backend, groups, discardable regions, dirty tracking) and
 * replaces the previous one; REGION_ADD/REGION_DEL a memory region (id, flags, the FDNAME of its
 * memory file); MAP_ADD/MAP_DEL a mapping (by IOVA); GONE a container closed for good; VFIO_USER_* a
 * session of a device the container serves over vfio-user (below).

 *
 * Compaction: when the log holds more than twice what is live, a snapshot of the live state goes into
 * a fresh memfd of the next generation, which enters the store complete before the old one leaves it;
 * a new instance takes the highest complete generation. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "state-encode.h"

#define STATE_LOG_MAGIC "vfbrlog1"
/* 2: records checksummed with CRC-32C. Version 1 logs (CRC-32) are still read. */
#define STATE_LOG_VERSION 2
#define STATE_LOG_HEADER_SIZE 4096
#define STATE_LOG_RECORD_SIZE 64

enum {
        STATE_RECORD_HEAD = 1,
        STATE_RECORD_BLOB,
        STATE_RECORD_REGION_ADD,
        STATE_RECORD_REGION_DEL,
        STATE_RECORD_MAP_ADD,
        STATE_RECORD_MAP_DEL,
        STATE_RECORD_GONE,
        /* A device served over vfio-user (vfio-user-server.h): the server (its device), its client
         * (identity, negotiated capabilities, IRQ indexes; replaces the previous one), the client gone
         * (its DMA entries with it), a DMA entry of the client added or removed (by IOVA; a mapped one
         * is a MAP_ADD of the container too), the server stopped. Logs without them (older daemons)
         * simply serve nothing. */
        STATE_RECORD_VFIO_USER_SERVER,
        STATE_RECORD_VFIO_USER_CLIENT,
        STATE_RECORD_VFIO_USER_CLIENT_GONE,
        STATE_RECORD_VFIO_USER_DMA_ADD,
        STATE_RECORD_VFIO_USER_DMA_DEL,
        STATE_RECORD_VFIO_USER_STOP,
};

#define STATE_VFIO_USER_CLIENT_NEGOTIATED      (UINT32_C(1) << 0)
#define STATE_VFIO_USER_CLIENT_WARNED_UNMAPPED (UINT32_C(1) << 1)
#define STATE_VFIO_USER_CLIENT_TWIN_SOCKET     (UINT32_C(1) << 2)
#define STATE_VFIO_USER_CLIENT_WRITE_MULTIPLE  (UINT32_C(1) << 3)
#define STATE_VFIO_USER_DMA_MAPPED             (UINT32_C(1) << 0)

typedef struct StateLogHeader {
        char magic[8];
        uint32_t version;
        uint32_t record_size;
        uint64_t generation;
        uint64_t capacity;  /* records */
        uint64_t committed; /* records that count; raised last */
} StateLogHeader;

typedef struct StateRecord {
        uint32_t type;
        uint32_t crc;       /* CRC-32C (version 1: CRC-32) of the 64 bytes with this field 0 */
        uint64_t container;
        union {
                struct {
                        uint64_t length; /* of the JSON text, which starts here and goes on in BLOBs */
                        uint8_t data[40];
                } head;
                uint8_t blob[48];
                struct {
                        uint32_t id, flags;
                        char file[40]; /* NUL-terminated */
                } region;
                struct {
                        uint64_t iova, size, offset;
                        uint32_t region, flags;
                } map;
                struct {
                        uint32_t server;
                        uint32_t reserved;
                        char device[40]; /* NUL-terminated */
                } vu_server;
                struct {
                        uint32_t server, serial;
                        uint32_t uid;
                        int32_t pid;
                        uint32_t irq_indexes, flags;
                        uint32_t max_msg_fds, max_dma_maps;
                        uint64_t max_data_xfer_size, pgsizes;
                } vu_client;
                struct {
                        uint32_t server, flags;
                        uint64_t iova, size;
                } vu_dma;
        };
} StateRecord;


_Static_assert(sizeof(StateRecord) == STATE_LOG_RECORD_SIZE, "records are 64 bytes");
_Static_assert(sizeof(StateLogHeader) <= STATE_LOG_HEADER_SIZE, "the header fits its page");

typedef struct StateLog StateLog;

/* A new, empty log in a new memfd, room for capacity records (the memfd is sparse: only what is
 * written takes memory). */
int state_log_new(uint64_t generation, uint64_t capacity, StateLog **ret);
StateLog *state_log_free(StateLog *l);
DEFINE_TRIVIAL_CLEANUP_FUNC(StateLog *, state_log_free);
int state_log_fd(const StateLog *l);
uint64_t state_log_generation(const StateLog *l);
uint64_t state_log_used(const StateLog *l);
uint64_t state_log_capacity(const StateLog *l);

/* Appends r (its crc is computed here) after the commit point; -ENOSPC when full. */
int state_log_append(StateLog *l, StateRecord *r);
/* A HEAD with its BLOBs. */
int state_log_append_head(StateLog *l, uint64_t container, const char *json, size_t length);
/* Everything appended so far counts. */
void state_log_commit(StateLog *l);
/* Whether records wait for a commit. */
bool state_log_dirty(const StateLog *l);

/* CRC-32 (IEEE), of version 1 logs, and CRC-32C (Castagnoli), of version 2. */
uint32_t state_crc32(const void *data, size_t size);
uint32_t state_crc32c(const void *data, size_t size);

/* Reads a log (the bytes of a stored memfd): checks the header, returns its generation and, for each
 * container the committed records leave, its state (regions' file names, mappings and all). */
int state_log_read_generation(const void *data, size_t size, uint64_t *ret_generation);
int state_log_replay(const void *data, size_t size, ContainerState **ret, size_t *ret_n, BrokerError *e);
void container_states_free(ContainerState *l, size_t n);
