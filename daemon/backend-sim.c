/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The sim backend: an in-memory model of a VFIO type1v2 container, for developing a VMM without VFIO
 * hardware and for fast tests, like libvirt's test driver. Its rules follow Linux 6.1's
 * drivers/vfio/vfio_main.c and vfio_iommu_type1.c, and tests/vm holds it to the same contract tests
 * as the real kernel (longer than 600 lines: it models the whole type1 surface that backend-vfio.c
 * drives, rule for rule, and is easiest to check against it as one file):
 *  - a group is in at most one container (EBUSY), and only a viable group can join one (EPERM);
 *  - the first group sets the IOMMU; when the last group leaves, the IOMMU and every DMA mapping go;
 *  - MAP_DMA: READ/WRITE flags only, iova/size/vaddr aligned to the smallest IOMMU page (EINVAL), inside
 *    the IOVA ranges (EINVAL), no overlap (EEXIST), at most dma_entry_limit mappings (ENOSPC);
 *  - UNMAP_DMA (v2 semantics): a range that starts or ends inside a mapping is EINVAL; otherwise every
 *    mapping inside goes and the size unmapped is reported (0 when none);
 *  - device fds are real fds (a socketpair end). While the VMM holds any copy, the group cannot be
 *    detached, and a group whose container closed stays busy until the VMM closes them: the kernel's
 *    device fds hold the group the same way. */

#include <assert.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "backend-device.h"
#include "backend-sim.h"
#include "backend-sim-internal.h"
#include "config.h"
#include "log.h"
#include "mapping-table.h"

typedef struct SimContainer SimContainer;

typedef struct SimGroup {
        const SimGroupConfig *config;
        SimContainer *container;
        int *device_ends; /* our end of every device fd handed out */
        size_t n_device_ends;
} SimGroup;

typedef struct SimBackend {
        Backend base;
        const BrokerConfig *config;
        SimGroup *groups;
        size_t n_groups;
        uint64_t pinned_bytes;
        uint64_t hot_resets;
} SimBackend;

typedef struct SimDma {
        MappingTableNode node;
        uint64_t vaddr;
        uint32_t flags;
} SimDma;

struct SimContainer {
        BackendContainer base;
        SimBackend *sim;
        bool iommu_set;
        bool dirty_tracking;
        size_t n_groups;
        MappingTable dma;
};

static SimGroup *sim_find_group(SimBackend *s, unsigned id) {
        for (size_t i = 0; i < s->n_groups; i++)
                if (s->groups[i].config->id == id)
                        return &s->groups[i];
        return NULL;
}

/* Drops ends whose peer (every copy of the VMM's fd) is closed; returns how many are still open. */
static size_t sim_group_prune_devices(SimGroup *g) {
        size_t j = 0;

        for (size_t i = 0; i < g->n_device_ends; i++) {
                struct pollfd p = { .fd = g->device_ends[i], .events = POLLIN };

                if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)))
                        safe_close(g->device_ends[i]);
                else
                        g->device_ends[j++] = g->device_ends[i];
        }
        g->n_device_ends = j;
        return j;
}

static int group_info_fill(const SimGroupConfig *gc, BackendGroupInfo *info) {
        size_t n = strv_length(gc->devices);

        info->id = gc->id;
        info->viable = gc->viable;
        info->devices = calloc(n + 1, sizeof(char *));
        if (!info->devices)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                info->devices[i] = strdup(gc->devices[i]);
                if (!info->devices[i]) {
                        info->devices = strv_free(info->devices);
                        return -ENOMEM;
                }
        }
        return 0;
}

static int sim_list_groups(Backend *b, BackendGroupInfo **ret, size_t *ret_n) {
        SimBackend *s = (SimBackend *) b;
        BackendGroupInfo *infos;
        int r;

        infos = calloc(s->n_groups ? s->n_groups : 1, sizeof(BackendGroupInfo));
        if (!infos)
                return -ENOMEM;
        for (size_t i = 0; i < s->n_groups; i++) {
                r = group_info_fill(s->groups[i].config, &infos[i]);
                if (r < 0) {
                        backend_group_info_free_many(infos, i);
                        return r;
                }
        }
        *ret = infos;
        *ret_n = s->n_groups;
        return 0;
}

static int sim_get_group(Backend *b, unsigned id, BackendGroupInfo *ret) {
        SimGroup *g = sim_find_group((SimBackend *) b, id);

        if (!g)
                return -ENOENT;
        return group_info_fill(g->config, ret);
}

static int sim_new_container(Backend *b, BackendContainer **ret) {
        SimContainer *c = calloc(1, sizeof(SimContainer));

        if (!c)
                return -ENOMEM;
        c->base.backend = b;
        c->sim = (SimBackend *) b;
        c->dma = MAPPING_TABLE_INIT;
        *ret = &c->base;
        return 0;
}

static void sim_dma_remove(SimContainer *c, MappingTableNode *node) {
        mapping_table_remove(&c->dma, node);
        c->sim->pinned_bytes -= mapping_table_node_size(node);
        free(container_of(node, SimDma, node));
}

/* What the kernel does when the last group leaves: the IOMMU is released with every mapping. */
static void sim_container_release_iommu(SimContainer *c) {
        MappingTableNode *node, *next;

        MAPPING_TABLE_FOREACH_SAFE(node, next, &c->dma)
                sim_dma_remove(c, node);
        c->iommu_set = false;
        c->dirty_tracking = false;
}

static void sim_free_container(BackendContainer *bc) {
        SimContainer *c = (SimContainer *) bc;

        sim_container_release_iommu(c);
        for (size_t i = 0; i < c->sim->n_groups; i++)
                if (c->sim->groups[i].container == c)
                        c->sim->groups[i].container = NULL; /* device ends stay: the group stays busy */
        free(c);
}

static int sim_attach_group(BackendContainer *bc, unsigned id) {
        SimContainer *c = (SimContainer *) bc;
        SimGroup *g = sim_find_group(c->sim, id);

        if (!g)
                return -ENOENT; /* open("/dev/vfio/N") */
        if (g->container)
                return -EBUSY;
        if (sim_group_prune_devices(g) > 0) {
                log_debug("sim: group %u still has %zu device fds open from an earlier container.", id,
                          g->n_device_ends);
                return -EBUSY;
        }
        if (!g->config->viable)
                return -EPERM;

        g->container = c;
        c->n_groups++;
        c->iommu_set = true;
        return 0;
}

static int sim_detach_group(BackendContainer *bc, unsigned id) {
        SimContainer *c = (SimContainer *) bc;
        SimGroup *g = sim_find_group(c->sim, id);

        if (!g || g->container != c)
                return -EINVAL; /* VFIO_GROUP_UNSET_CONTAINER on a group in no container */
        if (sim_group_prune_devices(g) > 0) {
                log_debug("sim: group %u has %zu device fds open.", id, g->n_device_ends);
                return -EBUSY;
        }
        g->container = NULL;
        if (--c->n_groups == 0)
                sim_container_release_iommu(c);
        return 0;
}

static int sim_get_iommu_info(BackendContainer *bc, BackendIommuInfo *ret) {
        SimContainer *c = (SimContainer *) bc;
        const SimConfig *sc = &c->sim->config->sim;

        if (!c->iommu_set)
                return -EINVAL;
        ret->ranges = calloc(sc->n_iova_ranges ? sc->n_iova_ranges : 1, sizeof(IovaRange));
        if (!ret->ranges)
                return -ENOMEM;
        memcpy(ret->ranges, sc->iova_ranges, sc->n_iova_ranges * sizeof(IovaRange));
        ret->n_ranges = sc->n_iova_ranges;
        ret->page_sizes = sc->page_sizes;
        ret->dma_available = sc->dma_entry_limit - (uint32_t) mapping_table_size(&c->dma);
        return 0;
}

static uint64_t sim_min_page(const SimContainer *c) {
        uint64_t p = c->sim->config->sim.page_sizes;
        return p & -p;
}

static bool sim_iova_valid(const SimContainer *c, uint64_t first, uint64_t last) {
        const SimConfig *sc = &c->sim->config->sim;

        for (size_t i = 0; i < sc->n_iova_ranges; i++)
                if (first >= sc->iova_ranges[i].first && last <= sc->iova_ranges[i].last)
                        return true;
        return false;
}

/* What the kernel answers for a request it refuses as malformed; the detail goes to the debug log. */
static int sim_einval(const char *op, const char *what) {
        log_debug("sim: %s: %s.", op, what);
        return -EINVAL;
}

static int sim_map_dma(BackendContainer *bc, uint64_t vaddr, uint64_t iova, uint64_t size, uint32_t flags) {
        SimContainer *c = (SimContainer *) bc;
        uint64_t mask = sim_min_page(c) - 1;
        SimDma *d;

        if (flags == 0 || (flags & ~UINT32_C(3)))
                return sim_einval("MAP_DMA", "invalid DMA flags");
        if (!c->iommu_set)
                return sim_einval("MAP_DMA", "no IOMMU set");
        if (size == 0 || ((size | iova | vaddr) & mask))
                return sim_einval("MAP_DMA", "size, iova and vaddr must be page aligned");
        if (iova + (size - 1) < iova || vaddr + (size - 1) < vaddr)
                return sim_einval("MAP_DMA", "range overflows");
        if (!sim_iova_valid(c, iova, iova + (size - 1)))
                return sim_einval("MAP_DMA", "IOVA range outside the usable ranges");
        if (mapping_table_first_intersecting(&c->dma, iova, iova + (size - 1)))
                return -EEXIST;
        if (mapping_table_size(&c->dma) >= c->sim->config->sim.dma_entry_limit) {
                log_debug("sim: the DMA entry limit (%" PRIu32 ") is reached.", c->sim->config->sim.dma_entry_limit);
                return -ENOSPC;
        }

        d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        mapping_table_node_init(&d->node, iova, size);
        d->vaddr = vaddr;
        d->flags = flags;
        int r = mapping_table_insert(&c->dma, &d->node, NULL);
        assert(r == 0); /* checked above */
        (void) r;
        c->sim->pinned_bytes += size;
        return 0;
}

/* Without a device that reports its own writes (pinned_page_dirty_scope), type1 reports every page of
 * every mapping as dirty; that is what the sim reports. */
static void sim_mark_dirty(uint64_t *bitmap, uint64_t base, uint64_t page_size, const MappingTableNode *node) {
        for (uint64_t a = node->first; a <= node->last && a >= node->first; a += page_size) {
                uint64_t bit = (a - base) / page_size;
                bitmap[bit / 64] |= UINT64_C(1) << (bit % 64);
        }
}

static int sim_unmap(SimContainer *c, uint64_t iova, uint64_t size, uint64_t page_size, uint64_t *bitmap,
                     uint64_t *ret_unmapped) {
        uint64_t mask = sim_min_page(c) - 1, last, unmapped = 0;
        MappingTableNode *node, *next;

        if (!c->iommu_set)
                return sim_einval("UNMAP_DMA", "no IOMMU set");
        if (size == 0 || ((size | iova) & mask))
                return sim_einval("UNMAP_DMA", "size and iova must be page aligned");
        if (iova + (size - 1) < iova)
                return sim_einval("UNMAP_DMA", "range overflows");
        last = iova + (size - 1);

        node = mapping_table_find(&c->dma, iova);
        if (node && node->first < iova)
                return sim_einval("UNMAP_DMA", "range starts inside a mapping");
        node = mapping_table_find(&c->dma, last);
        if (node && node->last > last)
                return sim_einval("UNMAP_DMA", "range ends inside a mapping");

        if (bitmap && (!c->dirty_tracking || page_size != sim_min_page(c)))
                return sim_einval("UNMAP_DMA", "a dirty bitmap needs tracking and the smallest page size");

        for (node = mapping_table_first_intersecting(&c->dma, iova, last); node && node->first <= last; node = next) {
                next = mapping_table_next(node);
                unmapped += mapping_table_node_size(node);
                if (bitmap)
                        sim_mark_dirty(bitmap, iova, page_size, node);
                sim_dma_remove(c, node);
        }
        if (ret_unmapped)
                *ret_unmapped = unmapped;
        return 0;
}

static int sim_unmap_dma(BackendContainer *bc, uint64_t iova, uint64_t size, uint64_t *ret_unmapped) {
        return sim_unmap((SimContainer *) bc, iova, size, 0, NULL, ret_unmapped);
}

static int sim_unmap_dma_dirty(BackendContainer *bc, uint64_t iova, uint64_t size, uint64_t page_size,
                               uint64_t *bitmap, uint64_t *ret_unmapped) {
        return sim_unmap((SimContainer *) bc, iova, size, page_size, bitmap, ret_unmapped);
}

static int sim_set_dirty_tracking(BackendContainer *bc, bool start) {
        SimContainer *c = (SimContainer *) bc;

        if (!c->iommu_set)
                return sim_einval("DIRTY_PAGES", "no IOMMU set");
        c->dirty_tracking = start;
        return 0;
}

static int sim_get_dirty_bitmap(BackendContainer *bc, uint64_t iova, uint64_t size, uint64_t page_size,
                                uint64_t *bitmap) {
        SimContainer *c = (SimContainer *) bc;
        MappingTableNode *node;
        uint64_t last;

        if (!c->iommu_set || !c->dirty_tracking)
                return sim_einval("DIRTY_PAGES(GET_BITMAP)", "dirty page tracking is not started");
        if (page_size != sim_min_page(c) || size == 0 || ((iova | size) & (page_size - 1)))
                return sim_einval("DIRTY_PAGES(GET_BITMAP)", "range and page size must use the smallest page");
        if (iova + (size - 1) < iova)
                return sim_einval("DIRTY_PAGES(GET_BITMAP)", "range overflows");
        last = iova + (size - 1);
        node = mapping_table_find(&c->dma, iova);
        if (node && node->first != iova)
                return sim_einval("DIRTY_PAGES(GET_BITMAP)", "range starts inside a mapping");
        node = mapping_table_find(&c->dma, last);
        if (node && node->last != last)
                return sim_einval("DIRTY_PAGES(GET_BITMAP)", "range ends inside a mapping");

        for (node = mapping_table_first_intersecting(&c->dma, iova, last); node && node->first <= last;
             node = mapping_table_next(node))
                sim_mark_dirty(bitmap, iova, page_size, node);
        return 0;
}

/* The reset scope of a device is its PCI bus ("dddd:bb"), as for a secondary bus reset; a device on a
 * root bus (bus 00) has no bus reset, as the kernel reports for one without a reset slot (ENODEV). */
static int sim_get_hot_reset_groups(BackendContainer *bc, unsigned id, const char *device, unsigned **ret,
                                    size_t *ret_n) {
        SimContainer *c = (SimContainer *) bc;
        SimGroup *g = sim_find_group(c->sim, id);
        _cleanup_free_ unsigned *groups = NULL;
        size_t n = 0;

        if (!g || g->container != c)
                return sim_einval("GET_PCI_HOT_RESET_INFO", "group not in this container");
        if (strlen(device) < 7 || strncmp(device + 5, "00", 2) == 0) {
                log_debug("sim: %s sits on a root bus, which has no bus reset.", device);
                return -ENODEV;
        }

        groups = calloc(c->sim->n_groups + 1, sizeof(unsigned));
        if (!groups)
                return -ENOMEM;
        for (size_t i = 0; i < c->sim->n_groups; i++) {
                bool on_bus = false;
                for (char **d = c->sim->groups[i].config->devices; d && *d && !on_bus; d++)
                        on_bus = strncmp(*d, device, 7) == 0 && (*d)[7] == ':';
                if (on_bus)
                        groups[n++] = c->sim->groups[i].config->id; /* sorted: the groups are */
        }
        *ret = TAKE_PTR(groups);
        *ret_n = n;
        return 0;
}

static int sim_pci_hot_reset(BackendContainer *bc, unsigned id, const char *device,
                             BackendContainer *const *owners, const unsigned *groups, size_t n) {
        SimContainer *c = (SimContainer *) bc;
        _cleanup_free_ unsigned *needed = NULL;
        size_t n_needed = 0;
        int r;

        r = sim_get_hot_reset_groups(bc, id, device, &needed, &n_needed);
        if (r < 0)
                return r;
        /* The kernel's rule: every group the reset touches is among the given group fds, each of which
         * must be a group in a container (owners[i]). */
        for (size_t i = 0; i < n_needed; i++) {
                bool given = false;
                for (size_t k = 0; k < n && !given; k++) {
                        SimGroup *g = sim_find_group(c->sim, groups[k]);
                        given = groups[k] == needed[i] && g && g->container == (SimContainer *) owners[k];
                }
                if (!given)
                        return sim_einval("PCI_HOT_RESET", "a group the reset touches was not given");
        }
        c->sim->hot_resets++;
        return 0;
}

static int sim_get_device_fd(BackendContainer *bc, unsigned id, const char *device) {
        SimContainer *c = (SimContainer *) bc;
        SimGroup *g = sim_find_group(c->sim, id);
        int pair[2], *a;
        bool found = false;

        if (!g || g->container != c)
                return sim_einval("GET_DEVICE_FD", "group not in this container");
        for (char **d = g->config->devices; d && *d && !found; d++)
                found = strcmp(*d, device) == 0;
        if (!found)
                return -ENODEV;

        (void) sim_group_prune_devices(g);
        a = realloc(g->device_ends, (g->n_device_ends + 1) * sizeof(int));
        if (!a)
                return -ENOMEM;
        g->device_ends = a;

        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
                return log_debug_errno(-errno, "sim: cannot create a device fd: %m");
        g->device_ends[g->n_device_ends++] = pair[0];
        return pair[1];
}

/* Only the device fds are real in the sim: they keep a group busy across a restart as in the kernel.
 * Its DMA state comes back from the broker's state through update_dma_vaddr(). */
static int sim_get_fds(BackendContainer *bc, BackendFd **ret, size_t *ret_n) {
        SimContainer *c = (SimContainer *) bc;
        BackendFd *fds = NULL;
        size_t n = 0;

        for (size_t i = 0; i < c->sim->n_groups; i++) {
                SimGroup *g = &c->sim->groups[i];
                if (g->container != c)
                        continue;
                (void) sim_group_prune_devices(g);
                for (size_t k = 0; k < g->n_device_ends; k++) {
                        BackendFd *a = realloc(fds, (n + 1) * sizeof(BackendFd));
                        if (!a) {
                                free(fds);
                                return -ENOMEM;
                        }
                        fds = a;
                        fds[n] = (BackendFd) { .fd = g->device_ends[k], .poll = true };
                        snprintf(fds[n].name, sizeof(fds[n].name), "device-%u-%zu", g->config->id, k);
                        n++;
                }
        }
        *ret = fds;
        *ret_n = n;
        return 0;
}

static int sim_restore_container(Backend *b, BackendFd *fds, size_t n_fds, const unsigned *groups, size_t n_groups,
                                 BackendContainer **ret, BrokerError *e) {
        SimBackend *s = (SimBackend *) b;
        BackendContainer *bc;
        SimContainer *c;
        int r;

        r = sim_new_container(b, &bc);
        if (r < 0)
                return r;
        c = (SimContainer *) bc;
        for (size_t i = 0; i < n_groups; i++) {
                SimGroup *g = sim_find_group(s, groups[i]);
                if (!g || g->container) {
                        sim_free_container(bc);
                        return broker_error_set(e, BROKER_ERROR_NO_SUCH_GROUP, "sim: group %u cannot be restored.",
                                                groups[i]);
                }
                g->container = c;
                c->n_groups++;
                c->iommu_set = true;
        }
        for (size_t i = 0; i < n_fds; i++) {
                unsigned id;
                size_t k;
                SimGroup *g;
                int *a;

                if (sscanf(fds[i].name, "device-%u-%zu", &id, &k) != 2 || !(g = sim_find_group(s, id)) ||
                    g->container != c)
                        continue;
                a = realloc(g->device_ends, (g->n_device_ends + 1) * sizeof(int));
                if (!a)
                        continue;
                g->device_ends = a;
                g->device_ends[g->n_device_ends++] = fds[i].fd;
                fds[i].fd = -EBADF;
        }
        *ret = bc;
        return 0;
}

static int sim_update_dma_vaddr(BackendContainer *bc, uint64_t vaddr, uint64_t iova, uint64_t size, uint32_t flags) {
        return sim_map_dma(bc, vaddr, iova, size, flags);
}

static int sim_invalidate_dma_vaddr(BackendContainer *bc, uint64_t iova, uint64_t size) {
        return 0;
}

/* The simulated kernel state lives in this process: nothing outlives it but the device fds in the
 * store; the next instance rebuilds the rest from the broker's state. */
static void sim_abandon_container(BackendContainer *bc) {
        sim_free_container(bc);
}

static void sim_free(Backend *b) {
        SimBackend *s = (SimBackend *) b;

        for (size_t i = 0; i < s->n_groups; i++) {
                for (size_t j = 0; j < s->groups[i].n_device_ends; j++)
                        safe_close(s->groups[i].device_ends[j]);
                free(s->groups[i].device_ends);
        }
        free(s->groups);
        free(s);
}

static const BackendOps sim_ops = {
        .name = "sim",
        .free = sim_free,
        .list_groups = sim_list_groups,
        .get_group = sim_get_group,
        .new_container = sim_new_container,
        .free_container = sim_free_container,
        .attach_group = sim_attach_group,
        .detach_group = sim_detach_group,
        .get_iommu_info = sim_get_iommu_info,
        .map_dma = sim_map_dma,
        .unmap_dma = sim_unmap_dma,
        .get_device_fd = sim_get_device_fd,
        .get_hot_reset_groups = sim_get_hot_reset_groups,
        .pci_hot_reset = sim_pci_hot_reset,
        .set_dirty_tracking = sim_set_dirty_tracking,
        .get_dirty_bitmap = sim_get_dirty_bitmap,
        .unmap_dma_dirty = sim_unmap_dma_dirty,
        .get_fds = sim_get_fds,
        .restore_container = sim_restore_container,
        .update_dma_vaddr = sim_update_dma_vaddr,
        .invalidate_dma_vaddr = sim_invalidate_dma_vaddr,
        .abandon_container = sim_abandon_container,
        .get_device = backend_sim_device_get,
        .restore_device = backend_sim_device_restore,
};

static int group_config_compare(const void *a, const void *b) {
        const SimGroup *x = a, *y = b;
        return x->config->id < y->config->id ? -1 : x->config->id > y->config->id;
}

int backend_sim_new(const BrokerConfig *config, Backend **ret, BrokerError *e) {
        SimBackend *s;

        assert(config);
        assert(ret);

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->base.ops = &sim_ops;
        s->config = config;
        s->groups = calloc(config->sim.n_groups ? config->sim.n_groups : 1, sizeof(SimGroup));
        if (!s->groups) {
                free(s);
                return -ENOMEM;
        }
        for (size_t i = 0; i < config->sim.n_groups; i++)
                s->groups[i].config = &config->sim.groups[i];
        s->n_groups = config->sim.n_groups;
        qsort(s->groups, s->n_groups, sizeof(SimGroup), group_config_compare);

        *ret = &s->base;
        return 0;
}

uint64_t backend_sim_pinned_bytes(Backend *b) {
        assert(b->ops == &sim_ops);
        return ((SimBackend *) b)->pinned_bytes;
}

size_t backend_sim_open_device_fds(Backend *b, unsigned group) {
        SimGroup *g;

        assert(b->ops == &sim_ops);
        g = sim_find_group((SimBackend *) b, group);
        return g ? sim_group_prune_devices(g) : 0;
}

int backend_sim_dma(BackendContainer *bc, uint64_t iova, void *buf, size_t size, bool to_memory,
                    uint64_t *ret_fault) {
        SimContainer *c = (SimContainer *) bc;
        uint32_t need = to_memory ? UINT32_C(2) : UINT32_C(1); /* VFIO_DMA_MAP_FLAG_WRITE : _READ */
        uint64_t last;

        assert(bc->backend->ops == &sim_ops);
        if (size == 0)
                return 0;
        if (iova + (size - 1) < iova) {
                *ret_fault = UINT64_MAX;
                return -EFAULT;
        }
        last = iova + (size - 1);

        /* Check every byte first: a faulting transfer moves nothing. */
        for (uint64_t a = iova;;) {
                MappingTableNode *node = mapping_table_find(&c->dma, a);
                if (!node) {
                        *ret_fault = a;
                        return -EFAULT;
                }
                if (!(container_of(node, SimDma, node)->flags & need)) {
                        *ret_fault = a;
                        return -EACCES;
                }
                if (node->last >= last)
                        break;
                a = node->last + 1;
        }
        for (uint64_t a = iova; a <= last && a >= iova;) {
                MappingTableNode *node = mapping_table_find(&c->dma, a);
                uint64_t n = (node->last < last ? node->last : last) - a + 1;
                uint8_t *mem = (uint8_t *) (uintptr_t) (container_of(node, SimDma, node)->vaddr + (a - node->first));
                uint8_t *b = (uint8_t *) buf + (a - iova);

                if (to_memory)
                        memcpy(mem, b, n);
                else
                        memcpy(b, mem, n);
                if (node->last >= last)
                        break;
                a = node->last + 1;
        }
        return 0;
}
