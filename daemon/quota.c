/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <string.h>

#include "quota.h"

static bool name_matches_id(const char *name, unsigned long id, const char *resolved) {
        char buf[32];

        (void) snprintf(buf, sizeof(buf), "%lu", id);
        return strcmp(name, buf) == 0 || (resolved && strcmp(name, resolved) == 0);
}

static void limits_max(LimitConfig *a, const LimitConfig *b) {
        if (b->containers > a->containers)
                a->containers = b->containers;
        if (b->mappings > a->mappings)
                a->mappings = b->mappings;
        if (b->pinned_bytes > a->pinned_bytes)
                a->pinned_bytes = b->pinned_bytes;
        if (b->fds > a->fds)
                a->fds = b->fds;
        if (b->address_space > a->address_space)
                a->address_space = b->address_space;
}

void quota_resolve_limits(const BrokerConfig *config, uid_t uid, LimitConfig *ret) {
        char buf[4096];
        struct passwd pw, *pwp = NULL;
        gid_t groups[256];
        int n_groups = (int) ELEMENTSOF(groups);
        bool found = false;

        assert(config);
        assert(ret);

        (void) getpwuid_r(uid, &pw, buf, sizeof(buf), &pwp);

        for (size_t i = 0; i < config->n_user_limits; i++)
                if (name_matches_id(config->user_limits[i].name, uid, pwp ? pwp->pw_name : NULL)) {
                        *ret = config->user_limits[i].limits;
                        return;
                }

        /* Root can pin memory without the broker anyway: limiting it protects nothing, and would
         * break a root VMM (libvirt's QEMU) out of the box. An explicit "users" entry still applies. */
        if (uid == 0) {
                *ret = (LimitConfig) { UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX };
                return;
        }

        if (pwp && config->n_group_limits > 0 &&
            getgrouplist(pwp->pw_name, pwp->pw_gid, groups, &n_groups) >= 0) {
                LimitConfig best = {};

                for (int g = 0; g < n_groups; g++) {
                        char gbuf[4096];
                        struct group gr, *grp = NULL;

                        (void) getgrgid_r(groups[g], &gr, gbuf, sizeof(gbuf), &grp);
                        for (size_t i = 0; i < config->n_group_limits; i++)
                                if (name_matches_id(config->group_limits[i].name, groups[g],
                                                    grp ? grp->gr_name : NULL)) {
                                        limits_max(&best, &config->group_limits[i].limits);
                                        found = true;
                                }
                }
                if (found) {
                        *ret = best;
                        return;
                }
        }

        *ret = config->default_limits;
}

static UserUsage *quota_find(Broker *b, uid_t uid) {
        for (UserUsage *u = b->usage; u; u = u->next)
                if (u->uid == uid)
                        return u;
        return NULL;
}

const UserUsage *quota_get(Broker *b, uid_t uid) {
        return quota_find(b, uid);
}

static bool exceeds(uint64_t used, uint64_t add, uint64_t limit) {
        return add > 0 && (used + add < used || used + add > limit);
}

uint64_t quota_total_fds_limit(Broker *b) {
        struct rlimit rl;
        uint64_t reserve;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
                return UINT64_MAX;
        reserve = b->config->reserved_fds;
        if (reserve == UINT64_MAX) {
                reserve = (uint64_t) rl.rlim_cur / 4;
                if (reserve < QUOTA_RESERVED_FDS_MIN)
                        reserve = QUOTA_RESERVED_FDS_MIN;
        }
        return (uint64_t) rl.rlim_cur > reserve ? (uint64_t) rl.rlim_cur - reserve : 0;
}

uint64_t quota_total_fds(Broker *b) {
        uint64_t n = 0;

        /* A container holds one fd (/dev/vfio/vfio) whatever its "fds"; a handful of users at most. */
        for (UserUsage *u = b->usage; u; u = u->next)
                if (u->uid != 0)
                        n += u->fds + u->fds_in_flight + u->containers;
        return n;
}

/* Whether `add` more fds for uid fit below the overall cap (plus allowance). */
static int quota_check_total_fds(Broker *b, uid_t uid, uint64_t add, uint64_t allowance, BrokerError *e) {
        uint64_t total, limit;

        if (uid == 0 || add == 0)
                return 0;
        total = quota_total_fds(b);
        limit = quota_total_fds_limit(b);
        if (limit != UINT64_MAX && limit + allowance >= limit)
                limit += allowance;
        if (!exceeds(total, add, limit))
                return 0;
        return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                "The broker already keeps %" PRIu64 " fds open for users other than root; %" PRIu64
                                " more for uid %u would pass the limit for all of them together, %" PRIu64
                                " (RLIMIT_NOFILE minus \"reserved_fds\", kept for the daemon and root).", total,
                                add, uid, quota_total_fds_limit(b));
}

static UserUsage *quota_get_or_add(Broker *b, uid_t uid) {
        UserUsage *u = quota_find(b, uid);

        if (u)
                return u;
        u = calloc(1, sizeof(*u));
        if (!u)
                return NULL;
        u->uid = uid;
        quota_resolve_limits(b->config, uid, &u->limits);
        u->next = b->usage;
        b->usage = u;
        return u;
}

int quota_charge_force(Broker *b, uid_t uid, uint64_t containers, uint64_t mappings, uint64_t bytes) {
        UserUsage *u = quota_get_or_add(b, uid);

        if (!u)
                return -ENOMEM;
        u->containers += containers;
        u->mappings += mappings;
        u->pinned_bytes += bytes;
        return 0;
}

int quota_charge(Broker *b, uid_t uid, uint64_t containers, uint64_t mappings, uint64_t bytes,
                 BrokerError *e) {
        UserUsage *u;
        int r;

        assert(b);

        u = quota_get_or_add(b, uid);
        if (!u)
                return -ENOMEM;

        if (exceeds(u->containers, containers, u->limits.containers))
                return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                        "uid %u already holds %" PRIu64 " containers; the limit \"containers\" "
                                        "is %" PRIu64 ".", uid, u->containers, u->limits.containers);
        if (exceeds(u->mappings, mappings, u->limits.mappings))
                return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                        "uid %u already holds %" PRIu64 " mappings; the limit \"mappings\" is %"
                                        PRIu64 ".", uid, u->mappings, u->limits.mappings);
        r = quota_check_total_fds(b, uid, containers, 0, e);
        if (r < 0)
                return r;
        if (exceeds(u->pinned_bytes, bytes, u->limits.pinned_bytes))
                return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                        "Mapping 0x%" PRIx64 " more bytes would pin 0x%" PRIx64 " bytes for uid "
                                        "%u; the limit \"pinned_bytes\" is 0x%" PRIx64 ".", bytes,
                                        u->pinned_bytes + bytes, uid, u->limits.pinned_bytes);

        u->containers += containers;
        u->mappings += mappings;
        u->pinned_bytes += bytes;
        return 0;
}

int quota_charge_memory(Broker *b, uid_t uid, uint64_t fds, uint64_t address_space, bool force, BrokerError *e) {
        UserUsage *u;
        int r;

        assert(b);

        u = quota_get_or_add(b, uid);
        if (!u)
                return -ENOMEM;

        if (!force && exceeds(u->fds, fds, u->limits.fds))
                return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                        "uid %u already has the broker keep %" PRIu64 " fds open (distinct memory "
                                        "fds and peer connections); the limit \"fds\" is %" PRIu64 ".", uid,
                                        u->fds, u->limits.fds);
        if (!force && exceeds(u->address_space, address_space, u->limits.address_space))
                return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                        "Mapping would reserve 0x%" PRIx64 " more bytes of the broker's address "
                                        "space (the broker maps memory files in windows of whole 1 GiB granules "
                                        "around what is mapped), 0x%" PRIx64 " in all for uid %u; the limit "
                                        "\"address_space\" is 0x%" PRIx64 ".", address_space,
                                        u->address_space + address_space, uid, u->limits.address_space);
        r = force ? 0 : quota_check_total_fds(b, uid, fds, 0, e);
        if (r < 0)
                return r;

        u->fds += fds;
        u->address_space += address_space;
        return 0;
}

static void quota_forget_idle(Broker *b, UserUsage *u) {
        /* Forget idle users, so limits changed in the configuration apply from the next charge. */
        if (u->containers == 0 && u->mappings == 0 && u->pinned_bytes == 0 && u->fds == 0 && u->address_space == 0 &&
            u->fds_in_flight == 0)
                for (UserUsage **p = &b->usage; *p; p = &(*p)->next)
                        if (*p == u) {
                                *p = u->next;
                                free(u);
                                break;
                        }
}

void quota_release_memory(Broker *b, uid_t uid, uint64_t fds, uint64_t address_space) {
        UserUsage *u = quota_find(b, uid);

        assert(u);
        assert(u->fds >= fds && u->address_space >= address_space);

        u->fds -= fds;
        u->address_space -= address_space;
        quota_forget_idle(b, u);
}

int quota_charge_fds_in_flight(Broker *b, uid_t uid, uint64_t fds, uint64_t allowance, BrokerError *e) {
        UserUsage *u;
        uint64_t limit;
        int r;

        assert(b);

        u = quota_get_or_add(b, uid);
        if (!u)
                return -ENOMEM;
        limit = u->limits.fds + allowance >= u->limits.fds ? u->limits.fds + allowance : UINT64_MAX;
        if (exceeds(u->fds + u->fds_in_flight, fds, limit))
                r = broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                     "uid %u has the broker keep %" PRIu64 " fds open and %" PRIu64 " more in "
                                     "messages still arriving; %" PRIu64 " more would pass the limit \"fds\", %"
                                     PRIu64 ", by more than one message's %" PRIu64 ".", uid, u->fds,
                                     u->fds_in_flight, fds, u->limits.fds, allowance);
        else
                r = quota_check_total_fds(b, uid, fds, allowance, e);
        if (r < 0) {
                /* A user first seen here holds nothing: forget it again. */
                quota_forget_idle(b, u);
                return r;
        }
        u->fds_in_flight += fds;
        return 0;
}

void quota_release_fds_in_flight(Broker *b, uid_t uid, uint64_t fds) {
        UserUsage *u = quota_find(b, uid);

        assert(u);
        assert(u->fds_in_flight >= fds);

        u->fds_in_flight -= fds;
        quota_forget_idle(b, u);
}

void quota_release(Broker *b, uid_t uid, uint64_t containers, uint64_t mappings, uint64_t bytes) {
        UserUsage *u = quota_find(b, uid);

        assert(u);
        assert(u->containers >= containers && u->mappings >= mappings && u->pinned_bytes >= bytes);

        u->containers -= containers;
        u->mappings -= mappings;
        u->pinned_bytes -= bytes;
        quota_forget_idle(b, u);
}

void quota_free_all(Broker *b) {
        while (b->usage) {
                UserUsage *u = b->usage;
                b->usage = u->next;
                free(u);
        }
}
