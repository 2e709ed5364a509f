/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Guest RAM handed over by a VMM as an fd: validation, and the daemon's own MAP_SHARED view of it.
 *
 * The IOMMU pins the pages behind a *virtual address of the daemon*, so the daemon must keep a mapping
 * of the VMM's file for as long as a DMA mapping points into it. Two limits shape how:
 *  - vm.max_map_count (65530 by default) is below the kernel's 65535 DMA entries, so one mmap per DMA
 *    mapping would run out of VMAs: DMA mappings share mmaps;
 *  - the daemon has 128 TiB of address space for every user together, and a sparse memfd can be
 *    larger than that while holding one page: mapping whole files let 43 Maps of 4 KiB take it all.
 * So a MemoryRegion is one open file with one protection (the fd the daemon keeps, named by the region's
 * id in the state store), and inside it the file is mapped in MemoryWindows: aligned to
 * MEMORY_WINDOW_GRANULE, clipped to the file's end, a request crossing granules getting one window
 * that covers them. Each DMA mapping borrows the window that covers it; the last one to go unmaps it.
 * A window depends only on the (offset, size) of the mappings that borrow it, so a restarted daemon
 * makes them again from the mappings it restores. A pool belongs to one container; freeing the
 * container drops the last references. */

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

/* What a window maps at least: 1 GiB keeps the VMA count of a VM whose RAM is mapped in large pieces
 * at a handful, and bounds what one 4 KiB Map of a sparse file reserves. Larger huge pages (a
 * hugetlbfs page size above it) make the granule that page size. */
#define MEMORY_WINDOW_GRANULE (UINT64_C(1) << 30)

typedef struct MemoryRegion MemoryRegion;
typedef struct MemoryWindow MemoryWindow;
typedef struct MemoryPool MemoryPool;

MemoryPool *memory_pool_new(void);
/* All windows must have been released. */
MemoryPool *memory_pool_free(MemoryPool *pool);
DEFINE_TRIVIAL_CLEANUP_FUNC(MemoryPool *, memory_pool_free);

/* Returns a reference to a window of the pool that maps [offset, offset+size) of the file behind fd
 * (validated with memory_check_fd/memory_check_range first) with at least the protection the flags
 * need. The window is shared with other mappings when one covers the range; otherwise a new one is
 * mapped (and, for a file the pool does not hold yet, a region made, the fd duplicated and kept).
 * mmap failures are BadMemory (for example a sealed memfd mapped writable) or Kernel; a region or
 * window the account refuses is its error (QuotaExceeded). */
int memory_pool_acquire(MemoryPool *pool, int fd, const MemoryFileInfo *info, uint64_t offset,
                        uint64_t size, uint32_t flags, MemoryWindow **ret, BrokerError *e);

/* Drops one reference; the last one munmaps the window, and the region's last window closes the kept
 * fd. */
void memory_pool_release(MemoryPool *pool, MemoryWindow *window);

/* With a linger callback, the last window nothing borrows is kept (one per pool) and linger is called:
 * its owner calls memory_pool_reap() a moment later, unless a request took the window again. */
void memory_pool_set_linger(MemoryPool *pool, void (*linger)(void *userdata), void *userdata);
void memory_pool_reap(MemoryPool *pool);

/* Number of regions (distinct kept fds) and of windows (distinct mmaps) currently held; for the state
 * store's counts, tests and benchmarks. */
size_t memory_pool_size(const MemoryPool *pool);
size_t memory_pool_n_windows(const MemoryPool *pool);

/* The daemon's address of file offset `offset`, which must lie inside the window. */
uint64_t memory_window_vaddr(const MemoryWindow *window, uint64_t offset);
/* The address space the window reserves, and the region (open file) it maps. */
uint64_t memory_window_length(const MemoryWindow *window);
MemoryRegion *memory_window_region(const MemoryWindow *window);

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

/* Whoever pays for the pool (the container's owner) is charged for what the daemon holds: one fd per
 * region, and per window the address space it reserves (for a 4 KiB Map of a sparse file, up to a
 * granule: more than is pinned, far less than the file). charge may refuse with an error in e,
 * before anything changes; force is set for what a restart restores, which stays held whatever the
 * limits say now. release gives back exactly what charge took, when the region or window goes. */
typedef struct MemoryPoolAccount {
        int (*charge)(void *userdata, uint64_t fds, uint64_t address_space, bool force, BrokerError *e);
        void (*release)(void *userdata, uint64_t fds, uint64_t address_space);
} MemoryPoolAccount;

void memory_pool_set_account(MemoryPool *pool, const MemoryPoolAccount *account, void *userdata);
/* One pointer per region for the watcher. */
void memory_region_set_data(MemoryRegion *region, void *data);
void *memory_region_get_data(const MemoryRegion *region);
MemoryRegion *memory_pool_find_id(MemoryPool *pool, unsigned id);

/* Restart support (state.c): regions have ids, unique within the pool, that name their fd in the fd
 * store; a new daemon adopts the fds, and the mappings it restores make their windows again. */
unsigned memory_region_id(const MemoryRegion *region);
/* BROKER_MAP_READ, or READ|WRITE for a writable mapping. */
uint32_t memory_region_flags(const MemoryRegion *region);
MemoryRegion *memory_pool_first(MemoryPool *pool);
MemoryRegion *memory_region_next(MemoryRegion *region);

/* Takes fd as region id, with the protection flags need; maps nothing yet. The region has no window
 * until memory_pool_acquire_id(); memory_pool_prune() drops the regions that got none. */
int memory_pool_adopt(MemoryPool *pool, int fd, unsigned id, uint32_t flags, BrokerError *e);
/* memory_pool_acquire() for memory the pool holds already, named by region id: a discardable region's
 * granule (within the limits), or with restore set a mapping a restart brings back (held whatever the
 * limits say now). */
int memory_pool_acquire_id(MemoryPool *pool, unsigned id, uint64_t offset, uint64_t size, bool restore,
                           MemoryWindow **ret, BrokerError *e);
void memory_pool_prune(MemoryPool *pool);
