/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The daemon's JSON configuration (default /etc/vfio-broker/config.json; absent file = defaults).
 * See man/vfio-brokerd.8 for the format. Parsing is strict: an unknown key or a wrong type is an error
 * that names the key, so a typo never silently falls back to a default. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "backend.h"
#include "error.h"

typedef struct SimGroupConfig {
        unsigned id;
        char **devices; /* NULL-terminated */
        bool viable;
} SimGroupConfig;

typedef struct SimConfig {
        SimGroupConfig *groups;
        size_t n_groups;
        IovaRange *iova_ranges;
        size_t n_iova_ranges;
        uint64_t page_sizes;
        uint32_t dma_entry_limit;
} SimConfig;

/* Per-user limits; UINT64_MAX means unlimited. */
typedef struct LimitConfig {
        uint64_t containers;
        uint64_t mappings;
        uint64_t pinned_bytes;
        uint64_t fds;           /* memory fds the daemon keeps open for the user's containers */
        uint64_t address_space; /* bytes of the daemon's address space mapped for them */
} LimitConfig;

typedef struct LimitEntry {
        char *name;   /* user or unix group name, or a decimal id */
        LimitConfig limits;
} LimitEntry;

typedef struct BrokerConfig {
        SimConfig sim;
        LimitConfig default_limits;
        LimitEntry *user_limits;
        size_t n_user_limits;
        LimitEntry *group_limits;
        size_t n_group_limits;
        /* Fds of RLIMIT_NOFILE that users other than root may not take together ("limits.reserved_fds");
         * UINT64_MAX: a quarter of RLIMIT_NOFILE, at least QUOTA_RESERVED_FDS_MIN (quota.c). */
        uint64_t reserved_fds;
} BrokerConfig;

/* Fills in the defaults: the sim topology (four single-device viable groups, one two-device group,
 * one non-viable group), x86 IOVA ranges without the MSI window, 4K|2M|1G pages, 65535 entries. */
int broker_config_new_default(BrokerConfig **ret);

/* Parses JSON text (RFC 8259: no comments, trailing commas or keys given twice in one object). On error
 * returns -EINVAL and fills e (InvalidArgs) with "key.path: what is wrong", or, for the syntax, "not valid
 * JSON at line L, column C: what is wrong". */
int broker_config_parse(const char *text, BrokerConfig **ret, BrokerError *e);

/* Loads a file: 1 when it was read, 0 when it is missing (ENOENT) and missing_ok, and so the defaults
 * apply. */
int broker_config_load(const char *path, bool missing_ok, BrokerConfig **ret, BrokerError *e);

BrokerConfig *broker_config_free(BrokerConfig *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(BrokerConfig *, broker_config_free);
