/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The vfio-user wire format, protocol 0.1, as QEMU's docs/interop/vfio-user.rst specifies it: a 16-byte
 * header, then a command-specific payload, all in host byte order over an AF_UNIX stream socket, fds as
 * SCM_RIGHTS. Structures that mirror a <linux/vfio.h> ioctl argument keep its layout (argsz first), so
 * the flag values are the kernel's.
 *
 * Only the layout lives here; what a valid message is, is vfio-user-message.c's business. */

#include <assert.h>
#include <stdint.h>

#define VFIO_USER_MAJOR 0
#define VFIO_USER_MINOR 1

typedef enum VfioUserCommand {
        VFIO_USER_VERSION                  = 1,
        VFIO_USER_DMA_MAP                  = 2,
        VFIO_USER_DMA_UNMAP                = 3,
        VFIO_USER_DEVICE_GET_INFO          = 4,
        VFIO_USER_DEVICE_GET_REGION_INFO   = 5,
        VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6,
        VFIO_USER_DEVICE_GET_IRQ_INFO      = 7,
        VFIO_USER_DEVICE_SET_IRQS          = 8,
        VFIO_USER_REGION_READ              = 9,
        VFIO_USER_REGION_WRITE             = 10,
        VFIO_USER_DMA_READ                 = 11, /* server -> client; the broker never sends it */
        VFIO_USER_DMA_WRITE                = 12, /* server -> client; the broker never sends it */
        VFIO_USER_DEVICE_RESET             = 13,
        VFIO_USER_REGION_WRITE_MULTI       = 15,
        VFIO_USER_DEVICE_FEATURE           = 16,
        VFIO_USER_MIG_DATA_READ            = 17,
        VFIO_USER_MIG_DATA_WRITE           = 18,
} VfioUserCommand;

/* Header flags: bits 0-3 the message type, bit 4 No_reply, bit 5 Error. */
#define VFIO_USER_FLAGS_TYPE_MASK    UINT32_C(0xf)
#define VFIO_USER_FLAGS_TYPE_COMMAND UINT32_C(0x0)
#define VFIO_USER_FLAGS_TYPE_REPLY   UINT32_C(0x1)
#define VFIO_USER_FLAGS_NO_REPLY     (UINT32_C(1) << 4)
#define VFIO_USER_FLAGS_ERROR        (UINT32_C(1) << 5)

typedef struct __attribute__((packed)) VfioUserHeader {
        uint16_t msg_id;   /* the sender's; echoed in the reply */
        uint16_t command;
        uint32_t msg_size; /* of the whole message, header included */
        uint32_t flags;
        uint32_t error_no; /* errno in an error reply; reserved in a command */
} VfioUserHeader;

/* VFIO_USER_VERSION, both ways: then an optional NUL-terminated JSON object
 * {"capabilities": {"max_msg_fds": N, "max_data_xfer_size": N, "pgsizes": N, "max_dma_maps": N, ...}}. */
typedef struct __attribute__((packed)) VfioUserVersion {
        uint16_t major;
        uint16_t minor;
} VfioUserVersion;

/* Defaults the protocol gives capabilities a peer leaves out. */
#define VFIO_USER_DEFAULT_MAX_MSG_FDS        1
#define VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE (UINT64_C(1) << 20)
#define VFIO_USER_DEFAULT_MAX_DMA_MAPS       65535
#define VFIO_USER_DEFAULT_PGSIZES            UINT64_C(4096)

/* VFIO_USER_DMA_MAP request (struct vfio_iommu_type1_dma_map): argsz is the structure's size (32); one
 * fd when the memory can be mapped by the server, none otherwise. No reply payload. */
typedef struct __attribute__((packed)) VfioUserDmaMap {
        uint32_t argsz;
        uint32_t flags;   /* VFIO_DMA_MAP_FLAG_READ (1) | VFIO_DMA_MAP_FLAG_WRITE (2) */
        uint64_t offset;  /* in the fd; 0 without one */
        uint64_t address; /* the IOVA */
        uint64_t size;
} VfioUserDmaMap;

#define VFIO_USER_DMA_MAP_FLAG_READ  UINT32_C(1)
#define VFIO_USER_DMA_MAP_FLAG_WRITE UINT32_C(2)

/* VFIO_USER_DMA_UNMAP request and reply (struct vfio_iommu_type1_dma_unmap); argsz is the largest reply
 * the client takes, the reply echoes the request. */
typedef struct __attribute__((packed)) VfioUserDmaUnmap {
        uint32_t argsz;
        uint32_t flags;
        uint64_t address;
        uint64_t size;
} VfioUserDmaUnmap;

#define VFIO_USER_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP UINT32_C(1) /* VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP */
#define VFIO_USER_DMA_UNMAP_FLAG_ALL              UINT32_C(2) /* VFIO_DMA_UNMAP_FLAG_ALL: QEMU sends it */

/* VFIO_USER_DEVICE_GET_INFO request and reply (struct vfio_device_info without caps). */
typedef struct __attribute__((packed)) VfioUserDeviceInfo {
        uint32_t argsz;
        uint32_t flags;       /* VFIO_DEVICE_FLAGS_RESET (1), VFIO_DEVICE_FLAGS_PCI (2) */
        uint32_t num_regions;
        uint32_t num_irqs;
} VfioUserDeviceInfo;

#define VFIO_USER_DEVICE_FLAGS_RESET UINT32_C(1)
#define VFIO_USER_DEVICE_FLAGS_PCI   UINT32_C(2)

/* VFIO_USER_DEVICE_GET_REGION_INFO request and reply (struct vfio_region_info); the reply may be
 * followed by capabilities and carries the fd to mmap() when flags has MMAP. */
typedef struct __attribute__((packed)) VfioUserRegionInfo {
        uint32_t argsz;
        uint32_t flags;
        uint32_t index;
        uint32_t cap_offset; /* from the start of this structure */
        uint64_t size;
        uint64_t offset;     /* the mmap() offset in the fd */
} VfioUserRegionInfo;

#define VFIO_USER_REGION_INFO_FLAG_READ  UINT32_C(1)
#define VFIO_USER_REGION_INFO_FLAG_WRITE UINT32_C(2)
#define VFIO_USER_REGION_INFO_FLAG_MMAP  UINT32_C(4)
#define VFIO_USER_REGION_INFO_FLAG_CAPS  UINT32_C(8)

/* struct vfio_info_cap_header and struct vfio_region_info_cap_sparse_mmap. */
typedef struct __attribute__((packed)) VfioUserCapHeader {
        uint16_t id;
        uint16_t version;
        uint32_t next; /* from the start of the region info; 0 ends the list */
} VfioUserCapHeader;

#define VFIO_USER_REGION_INFO_CAP_SPARSE_MMAP 1

typedef struct __attribute__((packed)) VfioUserSparseMmapArea {
        uint64_t offset; /* from the region's mmap offset */
        uint64_t size;
} VfioUserSparseMmapArea;

typedef struct __attribute__((packed)) VfioUserCapSparseMmap {
        VfioUserCapHeader header;
        uint32_t nr_areas;
        uint32_t reserved;
        /* VfioUserSparseMmapArea areas[nr_areas]; */
} VfioUserCapSparseMmap;

/* VFIO_USER_DEVICE_GET_IRQ_INFO request and reply (struct vfio_irq_info). */
typedef struct __attribute__((packed)) VfioUserIrqInfo {
        uint32_t argsz;
        uint32_t flags; /* VFIO_IRQ_INFO_EVENTFD (1), MASKABLE (2), AUTOMASKED (4), NORESIZE (8) */
        uint32_t index;
        uint32_t count;
} VfioUserIrqInfo;

#define VFIO_USER_IRQ_INFO_EVENTFD    UINT32_C(1)
#define VFIO_USER_IRQ_INFO_MASKABLE   UINT32_C(2)
#define VFIO_USER_IRQ_INFO_AUTOMASKED UINT32_C(4)
#define VFIO_USER_IRQ_INFO_NORESIZE   UINT32_C(8)

/* VFIO_USER_DEVICE_SET_IRQS request (struct vfio_irq_set): argsz is the payload's size, data included
 * (count bytes of booleans with DATA_BOOL; eventfds travel as SCM_RIGHTS, not in data). */
typedef struct __attribute__((packed)) VfioUserIrqSet {
        uint32_t argsz;
        uint32_t flags;
        uint32_t index;
        uint32_t start;
        uint32_t count;
} VfioUserIrqSet;

#define VFIO_USER_IRQ_SET_DATA_NONE      (UINT32_C(1) << 0)
#define VFIO_USER_IRQ_SET_DATA_BOOL      (UINT32_C(1) << 1)
#define VFIO_USER_IRQ_SET_DATA_EVENTFD   (UINT32_C(1) << 2)
#define VFIO_USER_IRQ_SET_ACTION_MASK    (UINT32_C(1) << 3)
#define VFIO_USER_IRQ_SET_ACTION_UNMASK  (UINT32_C(1) << 4)
#define VFIO_USER_IRQ_SET_ACTION_TRIGGER (UINT32_C(1) << 5)
#define VFIO_USER_IRQ_SET_DATA_MASK      UINT32_C(0x07)
#define VFIO_USER_IRQ_SET_ACTION_MASK_ALL UINT32_C(0x38)

/* VFIO_USER_REGION_READ / _WRITE request and reply: the data follows a write request and a read reply. */
typedef struct __attribute__((packed)) VfioUserRegionAccess {
        uint64_t offset;
        uint32_t region;
        uint32_t count;
} VfioUserRegionAccess;

/* PCI regions and interrupts (VFIO_PCI_*_REGION_INDEX, VFIO_PCI_*_IRQ_INDEX). */
#define VFIO_USER_PCI_BAR0_REGION_INDEX   0
#define VFIO_USER_PCI_BAR5_REGION_INDEX   5
#define VFIO_USER_PCI_ROM_REGION_INDEX    6
#define VFIO_USER_PCI_CONFIG_REGION_INDEX 7
#define VFIO_USER_PCI_VGA_REGION_INDEX    8
#define VFIO_USER_PCI_NUM_REGIONS         9
#define VFIO_USER_PCI_INTX_IRQ_INDEX      0
#define VFIO_USER_PCI_MSI_IRQ_INDEX       1
#define VFIO_USER_PCI_MSIX_IRQ_INDEX      2
#define VFIO_USER_PCI_ERR_IRQ_INDEX       3
#define VFIO_USER_PCI_REQ_IRQ_INDEX       4
#define VFIO_USER_PCI_NUM_IRQS            5

static_assert(sizeof(VfioUserHeader) == 16, "vfio-user header is 16 bytes");
static_assert(sizeof(VfioUserDmaMap) == 32, "DMA_MAP payload is 32 bytes");
static_assert(sizeof(VfioUserDmaUnmap) == 24, "DMA_UNMAP payload is 24 bytes");
static_assert(sizeof(VfioUserDeviceInfo) == 16, "DEVICE_GET_INFO payload is 16 bytes");
static_assert(sizeof(VfioUserRegionInfo) == 32, "DEVICE_GET_REGION_INFO payload is 32 bytes");
static_assert(sizeof(VfioUserCapSparseMmap) == 16, "sparse mmap capability header is 16 bytes");
static_assert(sizeof(VfioUserIrqInfo) == 16, "DEVICE_GET_IRQ_INFO payload is 16 bytes");
static_assert(sizeof(VfioUserIrqSet) == 20, "DEVICE_SET_IRQS payload is 20 bytes");
static_assert(sizeof(VfioUserRegionAccess) == 16, "REGION_READ/WRITE payload is 16 bytes");
