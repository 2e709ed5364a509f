/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Container.Update from the library: one message when its fds fit the transport, else split into parts
 * that stay all or nothing. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libvfio-broker-private.h"
#include "macro.h"

/* One Update message on the peer connection if there is one, else on the bus. */
static int update_message(vfio_broker *b, const char *path, const vfio_broker_unmap *unmaps, size_t n_unmaps,
                          const int *fds, size_t n_fds, const vfio_broker_map *maps, size_t n_maps,
                          sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus *target = b->peer ?: b->bus;
        int r;

        r = sd_bus_message_new_method_call(target, &m, b->peer ? NULL : BUS_NAME, path, CONTAINER_IFACE, "Update");
        if (r >= 0)
                (void) sd_bus_message_set_allow_interactive_authorization(m, true);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(tt)");
        for (size_t i = 0; r >= 0 && i < n_unmaps; i++)
                r = sd_bus_message_append(m, "(tt)", unmaps[i].iova, unmaps[i].size);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "h");
        for (size_t i = 0; r >= 0 && i < n_fds; i++)
                r = sd_bus_message_append(m, "h", fds[i]);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(utttu)");
        for (size_t i = 0; r >= 0 && i < n_maps; i++)
                r = sd_bus_message_append(m, "(utttu)", maps[i].memory, maps[i].offset, maps[i].size, maps[i].iova,
                                          maps[i].flags);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot build the Update call: %s", strerror(-r));
        return sd_bus_call(target, m, 0, error, NULL);
}

/* The last IOVA of a range; a range that wraps reaches the end of the address space. */
static uint64_t range_last(uint64_t iova, uint64_t size) {
        return size == 0 ? iova : iova + size - 1 < iova ? UINT64_MAX : iova + size - 1;
}

static int unmap_compare(const void *a, const void *b) {
        const vfio_broker_unmap *x = a, *y = b;
        return x->iova < y->iova ? -1 : x->iova > y->iova;
}

/* Marks the memory fds of maps that intersect an unmap range of the same Update: those maps can
 * only be made after the unmaps, so they travel in the message that carries the unmaps. */
static int mark_after_unmaps(const vfio_broker_unmap *unmaps, size_t n_unmaps, const vfio_broker_map *maps,
                             size_t n_maps, bool *after) {
        _cleanup_free_ vfio_broker_unmap *sorted = NULL;
        _cleanup_free_ uint64_t *max_last = NULL;

        if (n_unmaps == 0)
                return 0;
        sorted = malloc(n_unmaps * sizeof(*sorted));
        max_last = malloc(n_unmaps * sizeof(*max_last));
        if (!sorted || !max_last)
                return -ENOMEM;
        memcpy(sorted, unmaps, n_unmaps * sizeof(*sorted));
        qsort(sorted, n_unmaps, sizeof(*sorted), unmap_compare);
        for (size_t i = 0; i < n_unmaps; i++) {
                uint64_t last = range_last(sorted[i].iova, sorted[i].size);
                max_last[i] = i > 0 && max_last[i - 1] > last ? max_last[i - 1] : last;
        }
        for (size_t i = 0; i < n_maps; i++) {
                uint64_t first = maps[i].iova, last = range_last(maps[i].iova, maps[i].size);
                size_t lo = 0, hi = n_unmaps;

                /* The unmaps starting at or before the map's last byte; one of them reaches it iff the
                 * largest end among them does. */
                while (lo < hi) {
                        size_t mid = lo + (hi - lo) / 2;
                        if (sorted[mid].iova <= last)
                                lo = mid + 1;
                        else
                                hi = mid;
                }
                if (lo > 0 && max_last[lo - 1] >= first)
                        after[maps[i].memory] = true;
        }
        return 0;
}

/* Removes what earlier parts of a split Update mapped: exactly their ranges, so it cannot fail on
 * WouldSplit or NotMapped. */
static int update_undo(vfio_broker *b, const char *path, const vfio_broker_map *maps, const size_t *part_of_map,
                       size_t n_maps, size_t n_parts_done) {
        _cleanup_free_ vfio_broker_unmap *undo = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        size_t n = 0;
        int r;

        undo = malloc((n_maps ?: 1) * sizeof(*undo));
        if (!undo)
                return -ENOMEM;
        for (size_t i = 0; i < n_maps; i++)
                if (part_of_map[i] < n_parts_done)
                        undo[n++] = (vfio_broker_unmap) { maps[i].iova, maps[i].size };
        if (n == 0)
                return 0;
        r = update_message(b, path, undo, n, NULL, 0, NULL, 0, &error);
        sd_bus_error_free(&error);
        return r;
}

/* The daemon numbers the maps of the message it got ("Map #3: ..."); the caller's numbers differ
 * when the Update was split. */
static void set_update_error(vfio_broker *b, const sd_bus_error *error, int r, const size_t *orig_index,
                             size_t n_part_maps, bool undo_failed) {
        const char *text = error->message ?: strerror(-r);
        char message[sizeof(b->error_message)];
        unsigned long k;
        int skip = 0;

        if (orig_index && sscanf(text, "Map #%lu%n", &k, &skip) == 1 && skip > 0 && k < n_part_maps)
                snprintf(message, sizeof(message), "Map #%zu%s", orig_index[k], text + skip);
        else
                snprintf(message, sizeof(message), "%s", text);
        if (undo_failed)
                snprintf(message + strlen(message), sizeof(message) - strlen(message),
                         " Undoing the parts of this Update sent before failed too: maps of it may remain.");
        client_set_error(b, error->name, message);
}

/* Update() whole when its fds fit in one message, else split so that no message carries more fds
 * than the transport passes. A bus daemon does not refuse a message with too many fds, it
 * disconnects the sender, and the broker then closes every container of that connection. A split
 * Update stays all or nothing: the maps whose fds are not needed after the unmaps go first, in
 * parts of at most the limit; the last part carries the unmaps and the maps that intersect them,
 * and the daemon applies it whole; when a part fails, the maps of the parts before are unmapped. */
_public_ int vfio_broker_container_update(vfio_broker_container *c, const vfio_broker_unmap *unmaps, size_t n_unmaps,
                                         const int *memory_fds, size_t n_fds, const vfio_broker_map *maps,
                                         size_t n_maps) {
        _cleanup_free_ bool *after = NULL;
        _cleanup_free_ size_t *part_of_fd = NULL, *part_of_map = NULL, *index_in_part = NULL, *orig_index = NULL;
        _cleanup_free_ int *part_fds = NULL;
        _cleanup_free_ vfio_broker_map *part_maps = NULL;
        vfio_broker *b;
        int r;

        if (!c || (n_unmaps && !unmaps) || (n_fds && !memory_fds) || (n_maps && !maps))
                return -EINVAL;
        b = c->broker;
        client_set_error(b, NULL, NULL);

        /* Refuse here what the daemon would refuse, before any part is sent. */
        if (n_unmaps > BROKER_UPDATE_MAX || n_maps > BROKER_UPDATE_MAX) {
                char message[128];
                snprintf(message, sizeof(message), "At most %d %s per Update.", BROKER_UPDATE_MAX,
                         n_unmaps > BROKER_UPDATE_MAX ? "unmaps" : "maps");
                client_set_error(b, SD_BUS_ERROR_INVALID_ARGS, message);
                return -EINVAL;
        }
        for (size_t i = 0; i < n_maps; i++)
                if (maps[i].memory >= n_fds) {
                        char message[128];
                        snprintf(message, sizeof(message), "Map #%zu names memory fd #%" PRIu32 ", but %zu fds were passed.",
                                 i, maps[i].memory, n_fds);
                        client_set_error(b, SD_BUS_ERROR_INVALID_ARGS, message);
                        return -EINVAL;
                }

        for (int attempt = 0;; attempt++) {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                size_t limit = b->peer ? BROKER_UPDATE_FDS_MAX : BROKER_BUS_MESSAGE_FDS_MAX;
                size_t n_parts, n_early = 0, n_late = 0, failed_part = 0, n_failed_maps = 0;
                bool undo_failed = false;

                if (n_fds <= limit) {
                        r = update_message(b, c->path, unmaps, n_unmaps, memory_fds, n_fds, maps, n_maps, &error);
                        if (r < 0 && b->peer && client_connection_lost(r) && attempt == 0) {
                                /* The broker restarted: again on the bus or a new peer connection. */
                                sd_bus_error_free(&error);
                                b->peer = sd_bus_flush_close_unref(b->peer);
                                client_open_peer(b);
                                continue;
                        }
                        if (r < 0) {
                                set_update_error(b, &error, r, NULL, 0, false);
                                r = client_error_to_errno(&error, r);
                        }
                        sd_bus_error_free(&error);
                        return r < 0 ? r : 0;
                }

                /* Plan: the fds needed after the unmaps go in the last part, the others before it. */
                free(after);
                after = calloc(n_fds, sizeof(*after));
                if (!after)
                        return -ENOMEM;
                r = mark_after_unmaps(unmaps, n_unmaps, maps, n_maps, after);
                if (r < 0)
                        return client_fail_errno(b, r, "Cannot plan the Update");
                for (size_t i = 0; i < n_fds; i++)
                        if (after[i])
                                n_late++;
                        else
                                n_early++;
                if (n_late > limit) {
                        char message[320];
                        snprintf(message, sizeof(message),
                                 "%zu memory fds back maps that intersect this Update's unmaps, but one message on %s "
                                 "passes at most %zu fds and those maps must go in one message with the unmaps to stay "
                                 "all or nothing: send them in several Updates.",
                                 n_late, b->peer ? "the peer connection" : "the bus", limit);
                        client_set_error(b, SD_BUS_ERROR_LIMITS_EXCEEDED, message);
                        return -E2BIG;
                }
                n_parts = (n_early + limit - 1) / limit + 1;

                free(part_of_fd);
                free(index_in_part);
                part_of_fd = malloc(n_fds * sizeof(*part_of_fd));
                index_in_part = malloc(n_fds * sizeof(*index_in_part));
                if (!part_of_fd || !index_in_part)
                        return -ENOMEM;
                for (size_t i = 0, k = 0, last = 0; i < n_fds; i++) {
                        if (after[i]) {
                                part_of_fd[i] = n_parts - 1;
                                index_in_part[i] = last++;
                        } else {
                                part_of_fd[i] = k / limit;
                                index_in_part[i] = k % limit;
                                k++;
                        }
                }
                free(part_of_map);
                part_of_map = malloc((n_maps ?: 1) * sizeof(*part_of_map));
                if (!part_of_map)
                        return -ENOMEM;
                for (size_t i = 0; i < n_maps; i++)
                        part_of_map[i] = part_of_fd[maps[i].memory];

                if (!part_fds) {
                        part_fds = malloc(BROKER_UPDATE_FDS_MAX * sizeof(*part_fds));
                        part_maps = malloc((n_maps ?: 1) * sizeof(*part_maps));
                        orig_index = malloc((n_maps ?: 1) * sizeof(*orig_index));
                        if (!part_fds || !part_maps || !orig_index)
                                return -ENOMEM;
                }

                r = 0;
                for (size_t p = 0; p < n_parts; p++) {
                        bool last = p == n_parts - 1;
                        size_t nf = 0, nm = 0;

                        for (size_t i = 0; i < n_fds; i++)
                                if (part_of_fd[i] == p)
                                        part_fds[nf++] = memory_fds[i];
                        for (size_t i = 0; i < n_maps; i++)
                                if (part_of_map[i] == p) {
                                        part_maps[nm] = maps[i];
                                        part_maps[nm].memory = index_in_part[maps[i].memory];
                                        orig_index[nm++] = i;
                                }
                        if (last && nf == 0 && n_unmaps == 0)
                                break;
                        r = update_message(b, c->path, last ? unmaps : NULL, last ? n_unmaps : 0, part_fds, nf,
                                           part_maps, nm, &error);
                        if (r < 0) {
                                failed_part = p;
                                n_failed_maps = nm;
                                break;
                        }
                }
                if (r >= 0)
                        return 0;

                bool lost = b->peer && client_connection_lost(r);
                if (lost) {
                        /* The broker restarted (mappings survive that): undo and retry on the bus or a
                         * new peer connection. */
                        b->peer = sd_bus_flush_close_unref(b->peer);
                        client_open_peer(b);
                }
                if (failed_part > 0 && update_undo(b, c->path, maps, part_of_map, n_maps, failed_part) < 0)
                        undo_failed = true;
                if (lost && attempt == 0 && !undo_failed) {
                        sd_bus_error_free(&error);
                        continue;
                }
                set_update_error(b, &error, r, orig_index, n_failed_maps, undo_failed);
                r = client_error_to_errno(&error, r);
                sd_bus_error_free(&error);
                return r;
        }
}
