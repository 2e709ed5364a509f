/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "macro.h"
#include "mapping-table.h"
#include "memory.h"

struct MemoryWindow {
        MappingTableNode node; /* the file offsets [first, last] it maps */
        MemoryRegion *region;
        void *addr;            /* the daemon's address of file offset node.first */
        unsigned n_ref;        /* DMA mappings (and discardable regions) borrowing it */
        bool indexed;          /* in region->windows; a larger window covering it may have replaced it there */
};

struct MemoryRegion {
        MemoryRegion *next, *prev;
        unsigned id;
        dev_t dev;
        ino_t ino;
        int prot;
        int fd;              /* kept for the region's lifetime (and the fd store) */
        uint64_t page_size;  /* the file's: windows end on it */
        uint64_t granule;    /* windows start on it */
        /* The windows a new mapping may share, by file offset. They never overlap, so one lookup finds
         * the only candidate; a window that a larger one replaced here lives on, unindexed, until the
         * mappings that borrow it go (the IOMMU pins through its addresses: it cannot move). */
        MappingTable windows;
        size_t n_windows;    /* every live window, indexed or not: the region goes with the last */
        void *data;          /* the watcher's (memory_region_set_data()) */
        bool charged;        /* one fd, to the pool's account */
};

struct MemoryPool {
        MemoryRegion *regions;
        size_t n_regions, n_windows;
        /* The last window nothing borrows any more, kept until memory_pool_reap(): a VMM that unmaps
         * a range and maps it again (a Map+Unmap cycle, a granule discarded and populated) finds it
         * mapped, its region's fd still open, and costs no mmap, munmap, dup and close. One at most,
         * and reaped before anything new is made, so limits never see it. */
        MemoryWindow *idle;
        void (*linger)(void *userdata);
        void *linger_userdata;
        unsigned next_id;
        const MemoryPoolWatch *watch;
        void *watch_userdata;
        const MemoryPoolAccount *account;
        void *account_userdata;
};

static const char *file_type_name(mode_t mode) {
        switch (mode & S_IFMT) {
        case S_IFDIR:  return "a directory";
        case S_IFCHR:  return "a character device";
        case S_IFBLK:  return "a block device";
        case S_IFIFO:  return "a pipe";
        case S_IFSOCK: return "a socket";
        case S_IFLNK:  return "a symbolic link";
        default:       return "not a regular file";
        }
}

int memory_check_fd(int fd, uint32_t flags, MemoryFileInfo *ret, BrokerError *e) {
        struct stat st;
        struct statfs sfs;
        int fl;

        assert(ret);

        if (flags == 0 || (flags & ~(BROKER_MAP_READ | BROKER_MAP_WRITE)))
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                        "Map flags 0x%" PRIx32 " are invalid: use 1 (device may read), 2 "
                                        "(device may write) or 3 (both).", flags);

        fl = fcntl(fd, F_GETFL);
        if (fl < 0)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY, "The memory fd is not valid.");
        /* An O_PATH fd grants no access to the file's contents: never let it be used to reach them. */
        if (fl & O_PATH)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The memory fd is an O_PATH descriptor; pass an fd opened for reading "
                                        "(and writing, if the device may write).");
        if (fstat(fd, &st) < 0)
                return broker_error_set_errno(e, -errno, "Cannot fstat the memory fd");
        if (!S_ISREG(st.st_mode))
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The memory fd is %s; guest RAM must be a memfd, tmpfs or hugetlbfs "
                                        "file.", file_type_name(st.st_mode));
        if ((fl & O_ACCMODE) == O_WRONLY)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The memory fd is open write-only; it must be readable.");
        if ((flags & BROKER_MAP_WRITE) && (fl & O_ACCMODE) != O_RDWR)
                return memory_check_access(&(MemoryFileInfo) { .writable = false }, flags, e);
        if (fstatfs(fd, &sfs) < 0)
                return broker_error_set_errno(e, -errno, "Cannot fstatfs the memory fd");

        *ret = (MemoryFileInfo) {
                .dev = st.st_dev,
                .ino = st.st_ino,
                .file_size = (uint64_t) st.st_size,
                .hugetlbfs = sfs.f_type == HUGETLBFS_MAGIC,
                .page_size = sfs.f_type == HUGETLBFS_MAGIC ? (uint64_t) sfs.f_bsize : (uint64_t) sysconf(_SC_PAGESIZE),
                .writable = (fl & O_ACCMODE) == O_RDWR,
        };
        return 0;
}

int memory_check_access(const MemoryFileInfo *info, uint32_t flags, BrokerError *e) {
        assert(info);

        /* The broker maps the file with the protection the device needs, and never more than the
         * caller's own fd allows: a read-only fd cannot become writable guest memory. */
        if ((flags & BROKER_MAP_WRITE) && !info->writable)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The memory fd is open read-only, but flag 2 lets the device write: "
                                        "pass an O_RDWR fd, or map with flags 1.");
        return 0;
}

int memory_check_range(const MemoryFileInfo *info, uint64_t offset, uint64_t size, BrokerError *e) {
        assert(info);

        if (size == 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Map size must not be 0.");
        if (offset % info->page_size || size % info->page_size)
                return broker_error_set(e, BROKER_ERROR_UNALIGNED,
                                        "Offset 0x%" PRIx64 " and size 0x%" PRIx64 " must be multiples of 0x%"
                                        PRIx64 ", the %s.", offset, size, info->page_size,
                                        info->hugetlbfs ? "huge page size of the hugetlbfs file" : "page size");
        if (offset + size < offset || offset + size > info->file_size)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "Offset 0x%" PRIx64 " + size 0x%" PRIx64 " lies beyond the end of the "
                                        "memory file (0x%" PRIx64 " bytes).", offset, size, info->file_size);
        return 0;
}

MemoryPool *memory_pool_new(void) {
        return calloc(1, sizeof(MemoryPool));
}

static void region_link(MemoryPool *pool, MemoryRegion *r) {
        r->prev = NULL;
        r->next = pool->regions;
        if (r->next)
                r->next->prev = r;
        pool->regions = r;
        pool->n_regions++;
}

static void region_unlink(MemoryPool *pool, MemoryRegion *r) {
        if (r->prev)
                r->prev->next = r->next;
        else
                pool->regions = r->next;
        if (r->next)
                r->next->prev = r->prev;
        pool->n_regions--;
}

/* Frees a region that has no window; notify: the watcher knew it (added or adopted). */
static void region_free(MemoryPool *pool, MemoryRegion *r, bool notify) {
        assert(r->n_windows == 0);

        if (notify && pool->watch && pool->watch->region_removed)
                pool->watch->region_removed(pool->watch_userdata, r);
        safe_close(r->fd);
        if (r->charged)
                pool->account->release(pool->account_userdata, 1, 0);
        free(r);
}

MemoryPool *memory_pool_free(MemoryPool *pool) {
        if (!pool)
                return NULL;
        memory_pool_reap(pool);
        /* Every DMA mapping releases its window before the pool goes, and with the last window its
         * region: a leftover is a bug. */
        assert(!pool->regions);
        free(pool);
        return NULL;
}

static int memory_pool_charge(MemoryPool *pool, uint64_t fds, uint64_t address_space, bool force, BrokerError *e) {
        if (!pool->account)
                return 0;
        return pool->account->charge(pool->account_userdata, fds, address_space, force, e);
}

static void memory_pool_uncharge(MemoryPool *pool, uint64_t fds, uint64_t address_space) {
        if (pool->account)
                pool->account->release(pool->account_userdata, fds, address_space);
}

static int prot_for(uint32_t flags) {
        return flags & BROKER_MAP_WRITE ? PROT_READ | PROT_WRITE : PROT_READ;
}

static uint64_t granule_for(uint64_t page_size) {
        return page_size > MEMORY_WINDOW_GRANULE ? page_size : MEMORY_WINDOW_GRANULE;
}

static int map_error(int error, int prot, BrokerError *e) {
        if (error == EPERM || error == EACCES)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The memory file cannot be mapped %s (sealed against writing, or on a "
                                        "noexec/read-only mount?).", prot & PROT_WRITE ? "writable" : "readable");
        if (error == ENODEV || error == EINVAL)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The memory file does not support shared mappings.");
        return broker_error_set_errno(e, -error, "Cannot map the memory file");
}

static void window_free(MemoryPool *pool, MemoryWindow *w, bool keep_region);

/* A reference to a window of r covering [offset, offset+size): the indexed one that covers it, or a
 * new one. force: charged whatever the limits say (a restart). */
static int window_acquire(MemoryPool *pool, MemoryRegion *r, uint64_t offset, uint64_t size, bool force,
                          MemoryWindow **ret, BrokerError *e) {
        _cleanup_free_ MemoryWindow *w = NULL;
        MappingTableNode *node, *next;
        uint64_t last = offset + (size - 1), first, end, file_end;
        struct stat st;
        void *addr;
        int q;

        assert(size > 0 && last >= offset);

        /* Indexed windows never overlap: the one holding offset is the only one that can cover the
         * range. O(log n) in the windows of this file. */
        node = mapping_table_find(&r->windows, offset);
        if (node && node->last >= last) {
                MemoryWindow *found = container_of(node, MemoryWindow, node);
                if (pool->idle == found)
                        pool->idle = NULL;
                found->n_ref++;
                *ret = found;
                return 0;
        }
        /* Something new is made: the idle window goes first, so that it never counts against a limit
         * (r stays, if it was its last window: it gets one now). */
        if (pool->idle)
                window_free(pool, pool->idle, pool->idle->region == r);

        /* Not past the end of the file as it is now: the pages there do not exist, and pinning them
         * would fail in the kernel with a less helpful error. */
        if (fstat(r->fd, &st) < 0)
                return broker_error_set_errno(e, -errno, "Cannot fstat the memory fd");
        file_end = (uint64_t) st.st_size - (uint64_t) st.st_size % r->page_size;
        if (last >= file_end)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "Offset 0x%" PRIx64 " + size 0x%" PRIx64 " lies beyond the end of the "
                                        "memory file, which is 0x%" PRIx64 " bytes now (it shrank?).",
                                        offset, size, (uint64_t) st.st_size);

        /* The granules the range touches, clipped to the file's end... */
        first = offset - offset % r->granule;
        end = last - last % r->granule + r->granule;
        if (end > file_end || end < first)
                end = file_end;
        /* ... and the windows there, which the new one replaces in the index so that later requests
         * share one mapping rather than map these granules a third time. Indexed windows start on a
         * granule and end on one or at the file's end, so the union meets no further window. */
        for (node = mapping_table_first_intersecting(&r->windows, first, end - 1); node && node->first <= end - 1;
             node = mapping_table_next(node)) {
                if (node->first < first)
                        first = node->first;
                if (node->last >= end)
                        end = node->last + 1;
        }

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        /* What is reserved is the owner's to pay for, refused before it is taken. */
        q = memory_pool_charge(pool, 0, end - first, force, e);
        if (q < 0)
                return q;
        /* MAP_NORESERVE: the daemon never touches guest memory; the IOMMU pins what it maps. */
        addr = mmap(NULL, end - first, r->prot, MAP_SHARED | MAP_NORESERVE, r->fd, (off_t) first);
        if (addr == MAP_FAILED) {
                q = errno;
                memory_pool_uncharge(pool, 0, end - first);
                return map_error(q, r->prot, e);
        }

        for (node = mapping_table_first_intersecting(&r->windows, first, end - 1); node && node->first <= end - 1;
             node = next) {
                next = mapping_table_next(node);
                mapping_table_remove(&r->windows, node);
                container_of(node, MemoryWindow, node)->indexed = false;
        }
        mapping_table_node_init(&w->node, first, end - first);
        q = mapping_table_insert(&r->windows, &w->node, NULL);
        assert(q == 0);
        w->indexed = true;
        w->region = r;
        w->addr = addr;
        w->n_ref = 1;
        r->n_windows++;
        pool->n_windows++;
        *ret = TAKE_PTR(w);
        return 0;
}

static MemoryRegion *find_region(MemoryPool *pool, const MemoryFileInfo *info, int prot) {
        /* Linear in the distinct files the container holds, which its owner's "fds" limit bounds (and
         * which a VMM keeps to a few memory backends); the windows inside are a tree. */
        for (MemoryRegion *i = pool->regions; i; i = i->next)
                if (i->dev == info->dev && i->ino == info->ino && (i->prot & prot) == prot)
                        return i;
        return NULL;
}

int memory_pool_acquire(MemoryPool *pool, int fd, const MemoryFileInfo *info, uint64_t offset,
                        uint64_t size, uint32_t flags, MemoryWindow **ret, BrokerError *e) {
        int prot = prot_for(flags), q;
        MemoryRegion *r;

        assert(pool);
        assert(info);
        assert(ret);

        r = find_region(pool, info, prot);
        if (r)
                return window_acquire(pool, r, offset, size, false, ret, e);
        memory_pool_reap(pool);

        /* A new region means a new fd to keep: whoever keeps it (the state store) may refuse first. */
        if (pool->watch && pool->watch->region_admit) {
                q = pool->watch->region_admit(pool->watch_userdata, fd, info, e);
                if (q < 0)
                        return q;
        }

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        /* The fd is the owner's to pay for, refused before it is taken. */
        q = memory_pool_charge(pool, 1, 0, false, e);
        if (q < 0) {
                free(r);
                return q;
        }
        r->charged = !!pool->account;
        r->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (r->fd < 0) {
                q = -errno;
                region_free(pool, r, false);
                return broker_error_set_errno(e, q, "Cannot duplicate the memory fd");
        }
        r->dev = info->dev;
        r->ino = info->ino;
        r->prot = prot;
        r->page_size = info->page_size;
        r->granule = granule_for(info->page_size);

        q = window_acquire(pool, r, offset, size, false, ret, e);
        if (q < 0) {
                region_free(pool, r, false);
                return q;
        }
        r->id = pool->next_id++;
        region_link(pool, r);
        if (pool->watch && pool->watch->region_added)
                pool->watch->region_added(pool->watch_userdata, r);
        return 0;
}

/* Unmaps and frees a window nothing borrows; with keep_region, its region stays even without windows
 * (the caller is about to give it one). */
static void window_free(MemoryPool *pool, MemoryWindow *w, bool keep_region) {
        MemoryRegion *r = w->region;

        assert(w->n_ref == 0);
        if (pool->idle == w)
                pool->idle = NULL;
        if (w->indexed)
                mapping_table_remove(&r->windows, &w->node);
        (void) munmap(w->addr, memory_window_length(w));
        memory_pool_uncharge(pool, 0, memory_window_length(w));
        free(w);
        r->n_windows--;
        pool->n_windows--;
        if (r->n_windows > 0 || keep_region)
                return;
        region_unlink(pool, r);
        region_free(pool, r, true);
}

void memory_pool_reap(MemoryPool *pool) {
        if (pool->idle)
                window_free(pool, pool->idle, false);
}

void memory_pool_release(MemoryPool *pool, MemoryWindow *w) {
        assert(pool);
        assert(w);
        assert(w->n_ref > 0);

        if (--w->n_ref > 0)
                return;
        /* Only an indexed window can be found again. */
        if (!pool->linger || !w->indexed)
                return window_free(pool, w, false);
        if (pool->idle)
                window_free(pool, pool->idle, false);
        pool->idle = w;
        pool->linger(pool->linger_userdata);
}

void memory_pool_set_linger(MemoryPool *pool, void (*linger)(void *userdata), void *userdata) {
        pool->linger = linger;
        pool->linger_userdata = userdata;
}

size_t memory_pool_size(const MemoryPool *pool) {
        return pool->n_regions;
}

size_t memory_pool_n_windows(const MemoryPool *pool) {
        return pool->n_windows;
}

uint64_t memory_window_vaddr(const MemoryWindow *w, uint64_t offset) {
        assert(offset >= w->node.first && offset <= w->node.last);
        return (uint64_t) (uintptr_t) w->addr + (offset - w->node.first);
}

uint64_t memory_window_length(const MemoryWindow *w) {
        return mapping_table_node_size(&w->node);
}

MemoryRegion *memory_window_region(const MemoryWindow *w) {
        return w->region;
}

int memory_region_fd(const MemoryRegion *region) {
        return region->fd;
}

unsigned memory_region_id(const MemoryRegion *region) {
        return region->id;
}

uint32_t memory_region_flags(const MemoryRegion *region) {
        return region->prot & PROT_WRITE ? BROKER_MAP_READ | BROKER_MAP_WRITE : BROKER_MAP_READ;
}

void memory_pool_set_watch(MemoryPool *pool, const MemoryPoolWatch *watch, void *userdata) {
        pool->watch = watch;
        pool->watch_userdata = userdata;
}

void memory_pool_set_account(MemoryPool *pool, const MemoryPoolAccount *account, void *userdata) {
        /* What was charged to one account is released to it: set it before the first region. */
        assert(!pool->regions);
        pool->account = account;
        pool->account_userdata = userdata;
}

void memory_region_set_data(MemoryRegion *region, void *data) {
        region->data = data;
}

void *memory_region_get_data(const MemoryRegion *region) {
        return region->data;
}

MemoryRegion *memory_pool_find_id(MemoryPool *pool, unsigned id) {
        for (MemoryRegion *r = pool->regions; r; r = r->next)
                if (r->id == id)
                        return r;
        return NULL;
}

MemoryRegion *memory_pool_first(MemoryPool *pool) {
        return pool->regions;
}

MemoryRegion *memory_region_next(MemoryRegion *region) {
        return region->next;
}

int memory_pool_adopt(MemoryPool *pool, int fd, unsigned id, uint32_t flags, BrokerError *e) {
        MemoryFileInfo info;
        MemoryRegion *r;
        int ret;

        assert(pool);

        if (memory_pool_find_id(pool, id))
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Memory region %u appears twice.", id);

        ret = memory_check_fd(fd, flags, &info, e);
        if (ret < 0)
                return ret;
        if (info.file_size < info.page_size)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY, "Memory region %u is empty.", id);

        /* Nothing is mapped here: the windows come back with the mappings that borrow them
         * (memory_pool_acquire_id()), so a restart reserves what the mappings need, not the files. */
        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        ret = memory_pool_charge(pool, 1, 0, true, e);
        if (ret < 0) {
                free(r);
                return ret;
        }
        r->charged = !!pool->account;
        r->fd = fd;
        r->id = id;
        r->dev = info.dev;
        r->ino = info.ino;
        r->prot = prot_for(flags);
        r->page_size = info.page_size;
        r->granule = granule_for(info.page_size);
        region_link(pool, r);
        if (id >= pool->next_id)
                pool->next_id = id + 1;
        return 0;
}

int memory_pool_acquire_id(MemoryPool *pool, unsigned id, uint64_t offset, uint64_t size, bool restore,
                           MemoryWindow **ret, BrokerError *e) {
        MemoryRegion *r;

        assert(pool);
        assert(ret);

        r = memory_pool_find_id(pool, id);
        if (!r)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Memory region %u was not kept.", id);
        /* From the state store, so checked like input. */
        if (size == 0 || offset + size < offset || (offset | size) % r->page_size)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "Mapping at offset 0x%" PRIx64 " (0x%" PRIx64 " bytes) does not fit memory "
                                        "region %u.", offset, size, id);
        return window_acquire(pool, r, offset, size, restore, ret, e);
}

void memory_pool_prune(MemoryPool *pool) {
        MemoryRegion *r, *next;

        for (r = pool->regions; r; r = next) {
                next = r->next;
                if (r->n_windows == 0) {
                        region_unlink(pool, r);
                        region_free(pool, r, true);
                }
        }
}

int memory_check_writable(int fd, BrokerError *e) {
        int seals = fcntl(fd, F_GET_SEALS);

        /* Only memfds have seals (EINVAL elsewhere); the access mode is memory_check_fd()'s. */
        if (seals >= 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)))
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The memfd is sealed against writing (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE); "
                                        "the broker cannot write into it.");
        return 0;
}

int memory_write(int fd, const void *buf, uint64_t size, uint64_t offset, BrokerError *e) {
        const uint8_t *p = buf;

        while (size > 0) {
                ssize_t n = pwrite(fd, p, size, (off_t) offset);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EPERM || errno == EBADF || errno == EFBIG)
                                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                                        "Cannot write the bitmap into the file passed: %s (a sealed "
                                                        "memfd, or not open for writing).", strerror(errno));
                        return broker_error_set_errno(e, -errno, "Writing the bitmap failed");
                }
                if (n == 0)
                        return broker_error_set_errno(e, -EIO, "Writing the bitmap made no progress");
                p += n;
                size -= (uint64_t) n;
                offset += (uint64_t) n;
        }
        return 0;
}
