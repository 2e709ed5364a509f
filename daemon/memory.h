/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Guest RAM handed over by a VMM as an fd: validation, and the daemon's own MAP_SHARED view of it.
 *
 * The IOMMU pins the pages behind a *virtual address of the daemon*, so the daemon must keep a mapping
 * of the VMM's file for as long as a DMA mapping points into it. Mapping every request separately would
 * exhaust vm.max_map_count (65530 by default) long before the kernel's 65535 DMA entries, so a
 * MemoryPool keeps one refcounted mmap per (file, protection) and every DMA mapping borrows a slice of
 * it. A pool belongs to one container; freeing the container drops the last references. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

/* The kernel's VFIO_DMA_MAP_FLAG_READ / _WRITE: the device may read / write the memory. */

typedef struct MemoryFileInfo {
        dev_t dev;
        ino_t ino;
        uint64_t file_size;  /* st_size at validation time */
        uint64_t page_size;  /* alignment the file demands: host page size, or the hugetlbfs page size */
        bool hugetlbfs;
        bool writable;       /* opened O_RDWR */
} MemoryFileInfo;

/* Checks that fd can back a DMA mapping with these flags:
 *  - flags is a non-empty subset of READ|WRITE (else InvalidArgs),
 *  - not O_PATH, a regular file (memfd and hugetlbfs files are regular files), not a pipe, socket,
 *    device or directory (else BadMemory),
 *  - open for reading, and for writing when the device may write (BROKER_MAP_WRITE) (else BadMemory).
 * Does not check offset/size: see memory_check_range(). */
int memory_check_fd(int fd, uint32_t flags, MemoryFileInfo *ret, BrokerError *e);

/* Checks that a file memory_check_fd() accepted (for any flags) allows a mapping with these flags: a
 * read-only fd cannot back a mapping the device may write (else BadMemory). For requests that validate
 * one fd once and map it several times. */
int memory_check_access(const MemoryFileInfo *info, uint32_t flags, BrokerError *e);

/* Checks [offset, offset+size) against the file: size > 0 (else InvalidArgs), offset and size aligned
 * to info->page_size (else Unaligned), no overflow and offset+size <= file_size (else OutOfRange). */
int memory_check_range(const MemoryFileInfo *info, uint64_t offset, uint64_t size, BrokerError *e);

/* Whether the broker can write into a file memory_check_fd() accepted for BROKER_MAP_WRITE: not a
 * write-sealed memfd (else BadMemory). */
int memory_check_writable(int fd, BrokerError *e);

/* pwrite()s all of buf at offset; a failure is BadMemory (a sealed or read-only file) or Kernel. */
int memory_write(int fd, const void *buf, uint64_t size, uint64_t offset, BrokerError *e);

typedef struct MemoryRegion MemoryRegion;
typedef struct MemoryPool MemoryPool;

MemoryPool *memory_pool_new(void);
/* All regions must have been released. */
MemoryPool *memory_pool_free(MemoryPool *pool);
DEFINE_TRIVIAL_CLEANUP_FUNC(MemoryPool *, memory_pool_free);

/* Returns a reference to a region of the pool that maps [offset, offset+size) of the file behind fd
 * (validated with memory_check_fd/memory_check_range first) with at least the protection the flags
 * need, creating one (mmap MAP_SHARED of the whole file, fd duplicated and kept) if none fits.
 * *ret_vaddr is the daemon's address of file offset `offset`. mmap failures are BadMemory (for
 * example a sealed memfd mapped writable) or Kernel. */
int memory_pool_acquire(MemoryPool *pool, int fd, const MemoryFileInfo *info, uint64_t offset,
                        uint64_t size, uint32_t flags, MemoryRegion **ret, uint64_t *ret_vaddr,
                        BrokerError *e);

/* Drops one reference; the last one munmaps and closes the kept fd. */
void memory_pool_release(MemoryPool *pool, MemoryRegion *region);

/* Number of regions (distinct mmaps) currently held; for tests and benchmarks. */
size_t memory_pool_size(const MemoryPool *pool);

/* The fd the region keeps (owned by the region; do not close). */
int memory_region_fd(const MemoryRegion *region);

/* Whoever keeps the pool's fds elsewhere (the state store, for restarts) hears of every region:
 * region_admit before a new region is made of fd (it may refuse with an error in e, and nothing
 * changes), region_added once it exists, region_removed just before it goes (its fd still open).
 * Regions adopted with memory_pool_adopt() are not reported as added: the adopter knows them. */
typedef struct MemoryPoolWatch {
        int (*region_admit)(void *userdata, int fd, const MemoryFileInfo *info, BrokerError *e);
        void (*region_added)(void *userdata, MemoryRegion *region);
        void (*region_removed)(void *userdata, MemoryRegion *region);
} MemoryPoolWatch;

void memory_pool_set_watch(MemoryPool *pool, const MemoryPoolWatch *watch, void *userdata);

/* Whoever pays for the pool (the container's owner) is charged for every region: one fd the daemon
 * keeps and the address space its mapping reserves (the whole file, which for a sparse file can be
 * far more than what is pinned). charge may refuse with an error in e, before anything changes;
 * force is set for regions adopted after a restart, which stay held whatever the limits say now.
 * release gives back exactly what charge took, when the region goes. */
typedef struct MemoryPoolAccount {
        int (*charge)(void *userdata, uint64_t fds, uint64_t address_space, bool force, BrokerError *e);
        void (*release)(void *userdata, uint64_t fds, uint64_t address_space);
} MemoryPoolAccount;

void memory_pool_set_account(MemoryPool *pool, const MemoryPoolAccount *account, void *userdata);
/* The address space the region's mapping reserves. */
uint64_t memory_region_length(const MemoryRegion *region);
/* One pointer per region for the watcher. */
void memory_region_set_data(MemoryRegion *region, void *data);
void *memory_region_get_data(const MemoryRegion *region);
MemoryRegion *memory_pool_find_id(MemoryPool *pool, unsigned id);

/* Restart support (state.c): regions have ids, unique within the pool, that name their fd in the fd
 * store; a new daemon adopts the fds and maps them again. */
unsigned memory_region_id(const MemoryRegion *region);
/* The daemon's address of file offset `offset` in the region. */
uint64_t memory_region_vaddr(const MemoryRegion *region, uint64_t offset);
/* BROKER_MAP_READ, or READ|WRITE for a writable mapping. */
uint32_t memory_region_flags(const MemoryRegion *region);
MemoryRegion *memory_pool_first(MemoryPool *pool);
MemoryRegion *memory_region_next(MemoryRegion *region);

/* Takes fd as region id (mapping the whole file with the protection flags need). The region has no
 * reference until memory_pool_acquire_id(); memory_pool_prune() drops those that got none. */
int memory_pool_adopt(MemoryPool *pool, int fd, unsigned id, uint32_t flags, BrokerError *e);
int memory_pool_acquire_id(MemoryPool *pool, unsigned id, uint64_t offset, uint64_t size, MemoryRegion **ret,
                           uint64_t *ret_vaddr, BrokerError *e);
void memory_pool_prune(MemoryPool *pool);
