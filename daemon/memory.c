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

#include "memory.h"

struct MemoryRegion {
        MemoryRegion *next;
        unsigned id;
        unsigned n_ref;
        dev_t dev;
        ino_t ino;
        int prot;
        int fd;          /* kept for the region's lifetime (and, later, the fd store) */
        void *addr;
        uint64_t length; /* mapped bytes from file offset 0 */
        void *data;      /* the watcher's (memory_region_set_data()) */
        bool charged;    /* to the pool's account: one fd and length bytes of address space */
};

struct MemoryPool {
        MemoryRegion *regions;
        size_t n_regions;
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

static void memory_region_free(MemoryPool *pool, MemoryRegion *r) {
        if (pool && pool->watch && pool->watch->region_removed)
                pool->watch->region_removed(pool->watch_userdata, r);
        if (r->addr && r->addr != MAP_FAILED)
                (void) munmap(r->addr, r->length);
        safe_close(r->fd);
        if (r->charged)
                pool->account->release(pool->account_userdata, 1, r->length);
        free(r);
}

MemoryPool *memory_pool_free(MemoryPool *pool) {
        if (!pool)
                return NULL;
        /* Every DMA mapping releases its region before the pool goes: a leftover is a bug. */
        assert(!pool->regions);
        while (pool->regions) {
                MemoryRegion *r = pool->regions;
                pool->regions = r->next;
                memory_region_free(pool, r);
        }
        free(pool);
        return NULL;
}

static int memory_pool_charge(MemoryPool *pool, uint64_t length, bool force, BrokerError *e) {
        if (!pool->account)
                return 0;
        return pool->account->charge(pool->account_userdata, 1, length, force, e);
}

static void memory_pool_uncharge(MemoryPool *pool, uint64_t length) {
        if (pool->account)
                pool->account->release(pool->account_userdata, 1, length);
}

static int prot_for(uint32_t flags) {
        return flags & BROKER_MAP_WRITE ? PROT_READ | PROT_WRITE : PROT_READ;
}

int memory_pool_acquire(MemoryPool *pool, int fd, const MemoryFileInfo *info, uint64_t offset,
                        uint64_t size, uint32_t flags, MemoryRegion **ret, uint64_t *ret_vaddr,
                        BrokerError *e) {
        int prot = prot_for(flags);
        _cleanup_free_ MemoryRegion *r = NULL;
        struct stat st;
        uint64_t length;

        assert(pool);
        assert(info);
        assert(ret);
        assert(ret_vaddr);

        for (MemoryRegion *i = pool->regions; i; i = i->next)
                if (i->dev == info->dev && i->ino == info->ino && (i->prot & prot) == prot &&
                    offset + size <= i->length) {
                        i->n_ref++;
                        *ret = i;
                        *ret_vaddr = (uint64_t) (uintptr_t) i->addr + offset;
                        return 0;
                }

        /* Map the whole file as it is now, so later requests into the same file share the mapping
         * (one VMA per file instead of one per DMA mapping: vm.max_map_count is 65530). */
        if (fstat(fd, &st) < 0)
                return broker_error_set_errno(e, -errno, "Cannot fstat the memory fd");
        length = (uint64_t) st.st_size;
        if (length % info->page_size)
                length -= length % info->page_size;
        if (length < offset + size)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "The memory file shrank to 0x%" PRIx64 " bytes while being mapped.",
                                        (uint64_t) st.st_size);

        /* A new region means a new fd to keep: whoever keeps it (the state store) may refuse first. */
        if (pool->watch && pool->watch->region_admit) {
                int q = pool->watch->region_admit(pool->watch_userdata, fd, info, e);
                if (q < 0)
                        return q;
        }

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;

        /* The fd and the address space are the owner's to pay for, refused before either is taken. */
        int q = memory_pool_charge(pool, length, false, e);
        if (q < 0)
                return q;
        r->charged = !!pool->account;

        r->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (r->fd < 0) {
                q = -errno;
                memory_pool_uncharge(pool, length);
                return broker_error_set_errno(e, q, "Cannot duplicate the memory fd");
        }

        /* MAP_NORESERVE: the daemon never touches guest memory; the IOMMU pins what it maps. */
        r->addr = mmap(NULL, length, prot, MAP_SHARED | MAP_NORESERVE, r->fd, 0);
        if (r->addr == MAP_FAILED) {
                int error = errno;
                r->fd = safe_close(r->fd);
                memory_pool_uncharge(pool, length);
                if (error == EPERM || error == EACCES)
                        return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                                "The memory file cannot be mapped %s (sealed against writing, or "
                                                "on a noexec/read-only mount?).",
                                                prot & PROT_WRITE ? "writable" : "readable");
                if (error == ENODEV || error == EINVAL)
                        return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                                "The memory file does not support shared mappings.");
                return broker_error_set_errno(e, -error, "Cannot map the memory file");
        }

        r->n_ref = 1;
        r->id = pool->next_id++;
        r->dev = info->dev;
        r->ino = info->ino;
        r->prot = prot;
        r->length = length;
        r->next = pool->regions;
        pool->regions = r;
        pool->n_regions++;

        *ret = r;
        *ret_vaddr = (uint64_t) (uintptr_t) r->addr + offset;
        TAKE_PTR(r);
        if (pool->watch && pool->watch->region_added)
                pool->watch->region_added(pool->watch_userdata, *ret);
        return 0;
}

void memory_pool_release(MemoryPool *pool, MemoryRegion *region) {
        assert(pool);
        assert(region);
        assert(region->n_ref > 0);

        if (--region->n_ref > 0)
                return;

        for (MemoryRegion **p = &pool->regions; *p; p = &(*p)->next)
                if (*p == region) {
                        *p = region->next;
                        break;
                }
        pool->n_regions--;
        memory_region_free(pool, region);
}

size_t memory_pool_size(const MemoryPool *pool) {
        return pool->n_regions;
}

int memory_region_fd(const MemoryRegion *region) {
        return region->fd;
}

uint64_t memory_region_vaddr(const MemoryRegion *region, uint64_t offset) {
        return (uint64_t) (uintptr_t) region->addr + offset;
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
        /* Regions charged to one account are released to it: set it before the first region. */
        assert(!pool->regions);
        pool->account = account;
        pool->account_userdata = userdata;
}

uint64_t memory_region_length(const MemoryRegion *region) {
        return region->length;
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
        uint64_t length;
        int ret;

        assert(pool);

        for (MemoryRegion *i = pool->regions; i; i = i->next)
                if (i->id == id)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Memory region %u appears twice.", id);

        ret = memory_check_fd(fd, flags, &info, e);
        if (ret < 0)
                return ret;
        length = info.file_size - info.file_size % info.page_size;
        if (length == 0)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY, "Memory region %u is empty.", id);

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        ret = memory_pool_charge(pool, length, true, e);
        if (ret < 0) {
                free(r);
                return ret;
        }
        r->charged = !!pool->account;
        r->addr = mmap(NULL, length, prot_for(flags), MAP_SHARED | MAP_NORESERVE, fd, 0);
        if (r->addr == MAP_FAILED) {
                ret = -errno;
                memory_pool_uncharge(pool, length);
                free(r);
                return broker_error_set_errno(e, ret, "Cannot map memory region %u again", id);
        }
        r->fd = fd;
        r->id = id;
        r->dev = info.dev;
        r->ino = info.ino;
        r->prot = prot_for(flags);
        r->length = length;
        r->next = pool->regions;
        pool->regions = r;
        pool->n_regions++;
        if (id >= pool->next_id)
                pool->next_id = id + 1;
        return 0;
}

int memory_pool_acquire_id(MemoryPool *pool, unsigned id, uint64_t offset, uint64_t size, MemoryRegion **ret,
                           uint64_t *ret_vaddr, BrokerError *e) {
        for (MemoryRegion *r = pool->regions; r; r = r->next) {
                if (r->id != id)
                        continue;
                if (offset + size < offset || offset + size > r->length)
                        return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                                "Mapping at offset 0x%" PRIx64 " no longer fits memory region %u.",
                                                offset, id);
                r->n_ref++;
                *ret = r;
                *ret_vaddr = (uint64_t) (uintptr_t) r->addr + offset;
                return 0;
        }
        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Memory region %u was not kept.", id);
}

void memory_pool_prune(MemoryPool *pool) {
        for (MemoryRegion **p = &pool->regions; *p;) {
                MemoryRegion *r = *p;
                if (r->n_ref == 0) {
                        *p = r->next;
                        pool->n_regions--;
                        memory_region_free(pool, r);
                } else
                        p = &r->next;
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
