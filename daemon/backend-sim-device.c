/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The sim backend's device, as the SPEC describes it: every sim device behaves like QEMU's edu
 * (hw/misc/edu.c, docs/specs/edu.rst), so a VMM can be run end to end against --backend=sim.
 *
 * Config space is a type-0 PCI header (1234:11e8, class 00ff, INTx pin A, no capabilities) whose BAR0
 * is a 1 MiB 32-bit memory BAR that sizes like real hardware (write all ones, read back the size mask).
 * BAR0 registers: 0x00 identity 0x010000ed, 0x04 liveness (reads the inverse of what was written), 0x08
 * factorial, 0x20 status, 0x24 interrupt status, 0x60 raise, 0x64 acknowledge, 0x80 DMA source, 0x88
 * destination, 0x90 count, 0x98 command (bit 0 start, cleared when done; bit 1 device buffer to RAM;
 * bit 2 interrupt when done), and the 4 KiB DMA buffer at 0x40000 (which the sim, unlike edu, also lets
 * the CPU read and write).
 *
 * DMA goes through the sim container's mappings (backend_sim_dma()), exactly as an IOMMU would: an
 * unmapped IOVA or a missing permission moves nothing and is logged as a fault. A DMA only happens
 * with bus mastering enabled in the command register, as on a real PCI bus. The transfer completes
 * before the register write returns, which a guest cannot tell from a fast device.
 *
 * The device holds a sim device fd (container_open_device), so its group stays busy while it is served,
 * as a VFIO device fd keeps a group busy in the kernel. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/vfio.h>

#include "backend-device.h"
#include "backend-sim-internal.h"
#include "log.h"

#define EDU_BAR_SIZE       (UINT64_C(1) << 20)
#define EDU_CONFIG_SIZE    256
#define EDU_BUFFER_OFFSET  UINT64_C(0x40000)
#define EDU_BUFFER_SIZE    4096
#define EDU_IDENTITY       UINT32_C(0x010000ed)
#define EDU_STATUS_COMPUTING UINT32_C(0x01)
#define EDU_STATUS_IRQFACT   UINT32_C(0x80)
#define EDU_IRQ_FACTORIAL  UINT32_C(0x00000001)
#define EDU_IRQ_DMA        UINT32_C(0x00000100)
#define EDU_DMA_START      UINT64_C(0x1)
#define EDU_DMA_TO_RAM     UINT64_C(0x2)
#define EDU_DMA_IRQ        UINT64_C(0x4)

#define PCI_COMMAND_MASTER UINT16_C(0x4)

#define SIM_DEVICE_STATE_MAGIC "vfbrsim1"

/* What the device holds in its registers and buffer. It lives in a memfd that is kept with the device
 * across a daemon restart (get_fds), so a restarted daemon finds the device as its client left it, as
 * it would find real hardware; a crash in the middle of a register write leaves that write half done,
 * as a device reset at that moment would. */
typedef struct SimDeviceState {
        char magic[8];
        uint8_t config[EDU_CONFIG_SIZE];
        uint8_t config_wmask[EDU_CONFIG_SIZE]; /* writable bits per byte */

        uint32_t liveness, factorial, status, irq_status;
        uint64_t dma_src, dma_dst, dma_count, dma_cmd;
        uint8_t buffer[EDU_BUFFER_SIZE];

        bool intx_masked;      /* INTx is automasked once signalled, until the client unmasks it */
        uint32_t intx_serial;  /* names the stored INTx eventfd; a new one gets a new name */
} SimDeviceState;

typedef struct SimDevice {
        BackendDevice base;
        BackendContainer *container;
        char *name;
        int device_fd; /* keeps the group busy */

        int state_fd;
        SimDeviceState *st; /* mapped from state_fd */

        int intx_fd;       /* the client's eventfd, written to raise INTx */
        uint64_t faults;
} SimDevice;

static SimDeviceState *state_map(int fd) {
        void *p = mmap(NULL, sizeof(SimDeviceState), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        return p == MAP_FAILED ? NULL : p;
}

static void put16(uint8_t *p, uint16_t v) {
        memcpy(p, &v, sizeof(v));
}

static uint16_t get16(const uint8_t *p) {
        uint16_t v;
        memcpy(&v, p, sizeof(v));
        return v;
}

static void config_reset(SimDevice *s) {
        memset(s->st->config, 0, sizeof(s->st->config));
        memset(s->st->config_wmask, 0, sizeof(s->st->config_wmask));

        put16(s->st->config + 0x00, 0x1234); /* vendor */
        put16(s->st->config + 0x02, 0x11e8); /* device */
        s->st->config[0x08] = 0x10;          /* revision, as edu */
        s->st->config[0x0a] = 0xff;          /* subclass: class code 0x00ff, "unclassified" */
        s->st->config[0x0b] = 0x00;
        put16(s->st->config + 0x2c, 0x1af4); /* subsystem vendor and id, as QEMU's devices */
        put16(s->st->config + 0x2e, 0x1100);
        s->st->config[0x3d] = 0x01;          /* INTx pin A */

        /* Command: I/O space, memory space, bus master; INTx disable (bit 10). */
        s->st->config_wmask[0x04] = 0x07;
        s->st->config_wmask[0x05] = 0x04;
        s->st->config_wmask[0x0c] = 0xff; /* cache line size */
        s->st->config_wmask[0x0d] = 0xff; /* latency timer */
        /* BAR0: 32-bit non-prefetchable memory; bits below the 1 MiB size read as zero, which is how
         * a guest sizes it (write ~0, read back 0xfff00000). */
        s->st->config_wmask[0x12] = 0xf0;
        s->st->config_wmask[0x13] = 0xff;
        s->st->config_wmask[0x3c] = 0xff; /* interrupt line */
}

static void device_reset(SimDevice *s) {
        config_reset(s);
        s->st->liveness = s->st->factorial = s->st->status = s->st->irq_status = 0;
        s->st->dma_src = s->st->dma_dst = s->st->dma_count = s->st->dma_cmd = 0;
        memset(s->st->buffer, 0, sizeof(s->st->buffer));
        s->st->intx_masked = false;
}

static void intx_update(SimDevice *s) {
        uint64_t one = 1;

        /* Level-triggered INTx over an edge eventfd, as vfio-pci does: signal once, then stay masked
         * until the client unmasks (VFIO_IRQ_INFO_AUTOMASKED); a still-pending interrupt fires again on
         * unmask. */
        if (s->st->irq_status == 0 || s->st->intx_masked || s->intx_fd < 0)
                return;
        if (get16(s->st->config + 0x04) & 0x400) /* INTx disabled in the command register */
                return;
        if (write(s->intx_fd, &one, sizeof(one)) < 0)
                log_debug_errno(-errno, "sim device %s: cannot signal INTx: %m", s->name);
        s->st->intx_masked = true;
}

static void raise_irq(SimDevice *s, uint32_t bits) {
        s->st->irq_status |= bits;
        intx_update(s);
}

static void dma_fault(SimDevice *s, const char *why, uint64_t address) {
        s->faults++;
        log_warning("sim device %s: DMA fault, nothing moved: %s at 0x%" PRIx64 " (src 0x%" PRIx64 ", dst 0x%" PRIx64
                    ", count %" PRIu64 ").", s->name, why, address, s->st->dma_src, s->st->dma_dst, s->st->dma_count);
}

static void dma_run(SimDevice *s) {
        bool to_ram = s->st->dma_cmd & EDU_DMA_TO_RAM;
        uint64_t buf_addr = to_ram ? s->st->dma_src : s->st->dma_dst;
        uint64_t ram_addr = to_ram ? s->st->dma_dst : s->st->dma_src;
        uint64_t fault = 0;
        int r;

        if (!(get16(s->st->config + 0x04) & PCI_COMMAND_MASTER))
                dma_fault(s, "bus mastering is disabled in the command register", ram_addr);
        else if (buf_addr < EDU_BUFFER_OFFSET || s->st->dma_count > EDU_BUFFER_SIZE ||
                 buf_addr - EDU_BUFFER_OFFSET > EDU_BUFFER_SIZE - s->st->dma_count)
                dma_fault(s, "the transfer leaves the 4 KiB device buffer", buf_addr);
        else {
                uint8_t *b = s->st->buffer + (buf_addr - EDU_BUFFER_OFFSET);

                r = backend_sim_dma(s->container, ram_addr, b, s->st->dma_count, to_ram, &fault);
                if (r == -EFAULT)
                        dma_fault(s, "IOVA not mapped", fault);
                else if (r == -EACCES)
                        dma_fault(s, to_ram ? "IOVA not mapped writable" : "IOVA not mapped readable", fault);
        }

        s->st->dma_cmd &= ~EDU_DMA_START;
        if (s->st->dma_cmd & EDU_DMA_IRQ)
                raise_irq(s, EDU_IRQ_DMA);
}

static uint64_t bar_read(SimDevice *s, uint64_t addr, size_t size) {
        switch (addr) {
        case 0x00: return EDU_IDENTITY;
        case 0x04: return ~s->st->liveness & UINT32_MAX;
        case 0x08: return s->st->factorial;
        case 0x20: return s->st->status;
        case 0x24: return s->st->irq_status;
        case 0x80: return s->st->dma_src;
        case 0x88: return s->st->dma_dst;
        case 0x90: return s->st->dma_count;
        case 0x98: return s->st->dma_cmd;
        default:   return size == 8 ? UINT64_MAX : UINT32_MAX;
        }
}

static void bar_write(SimDevice *s, uint64_t addr, uint64_t v, size_t size) {
        switch (addr) {
        case 0x04:
                s->st->liveness = (uint32_t) v;
                break;
        case 0x08: {
                /* edu computes n! in a thread; the sim at once. */
                uint32_t n = (uint32_t) v, f = 1;
                for (uint32_t i = 2; i <= n && i != 0; i++)
                        f *= i;
                s->st->factorial = f;
                if (s->st->status & EDU_STATUS_IRQFACT)
                        raise_irq(s, EDU_IRQ_FACTORIAL);
                break;
        }
        case 0x20:
                s->st->status = (s->st->status & EDU_STATUS_COMPUTING) | ((uint32_t) v & EDU_STATUS_IRQFACT);
                break;
        case 0x60:
                raise_irq(s, (uint32_t) v);
                break;
        case 0x64:
                s->st->irq_status &= ~(uint32_t) v;
                break;
        case 0x80:
                s->st->dma_src = size == 8 ? v : (s->st->dma_src & ~UINT64_C(0xffffffff)) | (uint32_t) v;
                break;
        case 0x84:
                s->st->dma_src = (s->st->dma_src & UINT32_MAX) | (v << 32);
                break;
        case 0x88:
                s->st->dma_dst = size == 8 ? v : (s->st->dma_dst & ~UINT64_C(0xffffffff)) | (uint32_t) v;
                break;
        case 0x8c:
                s->st->dma_dst = (s->st->dma_dst & UINT32_MAX) | (v << 32);
                break;
        case 0x90:
                s->st->dma_count = size == 8 ? v : (s->st->dma_count & ~UINT64_C(0xffffffff)) | (uint32_t) v;
                break;
        case 0x98:
                if (s->st->dma_cmd & EDU_DMA_START)
                        break; /* as edu: a running transfer ignores new commands */
                s->st->dma_cmd = v;
                if (s->st->dma_cmd & EDU_DMA_START)
                        dma_run(s);
                break;
        default:
                break;
        }
}

static void sim_device_free(BackendDevice *d) {
        SimDevice *s = (SimDevice *) d;

        if (s->faults > 0)
                log_info("sim device %s: %" PRIu64 " DMA faults while served.", s->name, s->faults);
        safe_close(s->intx_fd);
        safe_close(s->device_fd);
        if (s->st)
                munmap(s->st, sizeof(SimDeviceState));
        safe_close(s->state_fd);
        free(s->name);
        free(s);
}

static int sim_device_get_info(BackendDevice *d, BackendDeviceInfo *ret) {
        *ret = (BackendDeviceInfo) {
                .flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
                .num_regions = VFIO_PCI_NUM_REGIONS,
                .num_irqs = VFIO_PCI_NUM_IRQS,
        };
        return 0;
}

static int sim_device_region_info(BackendDevice *d, uint32_t index, BackendRegionInfo *ret) {
        *ret = (BackendRegionInfo) { .mmap_fd = -EBADF };

        if (index >= VFIO_PCI_NUM_REGIONS)
                return -EINVAL;
        if (index == VFIO_PCI_BAR0_REGION_INDEX)
                /* Emulated registers: no mmap, every access is a REGION_READ/WRITE. */
                *ret = (BackendRegionInfo) { VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
                                             EDU_BAR_SIZE, -EBADF, 0, NULL, 0 };
        else if (index == VFIO_PCI_CONFIG_REGION_INDEX)
                *ret = (BackendRegionInfo) { VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
                                             EDU_CONFIG_SIZE, -EBADF, 0, NULL, 0 };
        return 0;
}

static bool register_access(uint64_t offset, size_t size) {
        return (size == 4 || size == 8) && offset % size == 0;
}

static int sim_device_region_read(BackendDevice *d, uint32_t index, uint64_t offset, void *buf, size_t size) {
        SimDevice *s = (SimDevice *) d;

        if (index == VFIO_PCI_CONFIG_REGION_INDEX) {
                if (offset > EDU_CONFIG_SIZE || size > EDU_CONFIG_SIZE - offset)
                        return -EINVAL;
                memcpy(buf, s->st->config + offset, size);
                return 0;
        }
        if (index != VFIO_PCI_BAR0_REGION_INDEX || offset > EDU_BAR_SIZE || size > EDU_BAR_SIZE - offset)
                return -EINVAL;

        if (offset >= EDU_BUFFER_OFFSET && offset - EDU_BUFFER_OFFSET + size <= EDU_BUFFER_SIZE) {
                memcpy(buf, s->st->buffer + (offset - EDU_BUFFER_OFFSET), size);
                return 0;
        }
        if (register_access(offset, size)) {
                uint64_t v = bar_read(s, offset, size);
                if (size == 4) {
                        uint32_t w = (uint32_t) v;
                        memcpy(buf, &w, 4);
                } else
                        memcpy(buf, &v, 8);
                return 0;
        }
        /* As edu: what is not a register reads as all ones. */
        memset(buf, 0xff, size);
        return 0;
}

static int sim_device_region_write(BackendDevice *d, uint32_t index, uint64_t offset, const void *buf,
                                   size_t size) {
        SimDevice *s = (SimDevice *) d;
        const uint8_t *b = buf;

        if (index == VFIO_PCI_CONFIG_REGION_INDEX) {
                if (offset > EDU_CONFIG_SIZE || size > EDU_CONFIG_SIZE - offset)
                        return -EINVAL;
                for (size_t i = 0; i < size; i++) {
                        uint8_t m = s->st->config_wmask[offset + i];
                        s->st->config[offset + i] = (uint8_t) ((s->st->config[offset + i] & ~m) | (b[i] & m));
                }
                intx_update(s); /* INTx disable may have been cleared */
                return 0;
        }
        if (index != VFIO_PCI_BAR0_REGION_INDEX || offset > EDU_BAR_SIZE || size > EDU_BAR_SIZE - offset)
                return -EINVAL;

        if (offset >= EDU_BUFFER_OFFSET && offset - EDU_BUFFER_OFFSET + size <= EDU_BUFFER_SIZE) {
                memcpy(s->st->buffer + (offset - EDU_BUFFER_OFFSET), buf, size);
                return 0;
        }
        if (register_access(offset, size)) {
                uint64_t v;
                if (size == 4) {
                        uint32_t w;
                        memcpy(&w, buf, 4);
                        v = w;
                } else
                        memcpy(&v, buf, 8);
                bar_write(s, offset, v, size);
        }
        return 0; /* writes elsewhere are ignored, as edu */
}

static int sim_device_irq_info(BackendDevice *d, uint32_t index, BackendIrqInfo *ret) {
        if (index >= VFIO_PCI_NUM_IRQS)
                return -EINVAL;
        if (index == VFIO_PCI_INTX_IRQ_INDEX)
                *ret = (BackendIrqInfo) { VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED, 1 };
        else
                /* No MSI capability in config space, so no MSI (as vfio-pci reports for such a device). */
                *ret = (BackendIrqInfo) { VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 0 };
        return 0;
}

static int sim_device_set_irqs(BackendDevice *d, uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                               const int *fds, const uint8_t *bools) {
        SimDevice *s = (SimDevice *) d;
        uint32_t data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK, action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        bool act;

        if (index >= VFIO_PCI_NUM_IRQS)
                return -EINVAL;
        if (count == 0) {
                /* DATA_NONE|TRIGGER with count 0: disable the index. */
                if (index == VFIO_PCI_INTX_IRQ_INDEX)
                        s->intx_fd = safe_close(s->intx_fd);
                return 0;
        }
        if (index != VFIO_PCI_INTX_IRQ_INDEX || start != 0 || count != 1)
                return -EINVAL;

        if (data == VFIO_IRQ_SET_DATA_EVENTFD) {
                if (action != VFIO_IRQ_SET_ACTION_TRIGGER)
                        /* A resample (unmask) eventfd needs KVM's irqfd; the client unmasks by message. */
                        return -EOPNOTSUPP;
                s->intx_fd = safe_close(s->intx_fd);
                if (fds && fds[0] >= 0) {
                        s->intx_fd = fcntl(fds[0], F_DUPFD_CLOEXEC, 3);
                        if (s->intx_fd < 0)
                                return -errno;
                        s->st->intx_serial++;
                }
                intx_update(s);
                return 0;
        }

        act = data == VFIO_IRQ_SET_DATA_NONE || (bools && bools[0]);
        if (!act)
                return 0;
        switch (action) {
        case VFIO_IRQ_SET_ACTION_MASK:
                s->st->intx_masked = true;
                break;
        case VFIO_IRQ_SET_ACTION_UNMASK:
                s->st->intx_masked = false;
                intx_update(s);
                break;
        case VFIO_IRQ_SET_ACTION_TRIGGER: {
                /* The loopback test: signal the eventfd as the device would. */
                uint64_t one = 1;
                if (s->intx_fd >= 0 && write(s->intx_fd, &one, sizeof(one)) < 0)
                        return -errno;
                break;
        }
        default:
                return -EINVAL;
        }
        return 0;
}

static int sim_device_reset(BackendDevice *d) {
        device_reset((SimDevice *) d);
        return 0;
}

static int sim_device_get_fds(BackendDevice *d, BackendFd **ret, size_t *ret_n) {
        SimDevice *s = (SimDevice *) d;
        BackendFd *fds = calloc(3, sizeof(BackendFd));
        size_t n = 0;

        if (!fds)
                return -ENOMEM;
        /* The device end keeps the group busy, as a VFIO device fd does. None is polled: the store
         * must not drop them when a peer closes. */
        fds[n++] = (BackendFd) { .name = "device", .fd = s->device_fd };
        fds[n++] = (BackendFd) { .name = "registers", .fd = s->state_fd };
        if (s->intx_fd >= 0) {
                fds[n] = (BackendFd) { .fd = s->intx_fd };
                snprintf(fds[n++].name, sizeof(fds[0].name), "intx-%" PRIu32, s->st->intx_serial);
        }
        *ret = fds;
        *ret_n = n;
        return 0;
}

static const BackendDeviceOps sim_device_ops = {
        .free = sim_device_free,
        .get_info = sim_device_get_info,
        .region_info = sim_device_region_info,
        .region_read = sim_device_region_read,
        .region_write = sim_device_region_write,
        .irq_info = sim_device_irq_info,
        .set_irqs = sim_device_set_irqs,
        .reset = sim_device_reset,
        .get_fds = sim_device_get_fds,
};

int backend_sim_device_get(BackendContainer *c, unsigned group, const char *device, BackendDevice **ret) {
        _cleanup_close_ int fd = -EBADF;
        SimDevice *s;

        /* The same checks as OpenDevice, and the same effect on the group. */
        fd = backend_container_open_device(c, group, device);
        if (fd < 0)
                return fd;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->name = strdup(device);
        if (!s->name) {
                free(s);
                return -ENOMEM;
        }
        s->base.ops = &sim_device_ops;
        s->container = c;
        s->device_fd = TAKE_FD(fd);
        s->intx_fd = -EBADF;
        s->state_fd = memfd_create("vfio-broker-sim-device", MFD_CLOEXEC);
        if (s->state_fd < 0 || ftruncate(s->state_fd, sizeof(SimDeviceState)) < 0 ||
            (s->st = state_map(s->state_fd)) == NULL) {
                int r = -errno;
                sim_device_free(&s->base);
                return r;
        }
        memcpy(s->st->magic, SIM_DEVICE_STATE_MAGIC, sizeof(s->st->magic));
        device_reset(s);
        *ret = &s->base;
        return 0;
}

int backend_sim_device_restore(BackendContainer *c, unsigned group, const char *device, BackendFd *fds,
                               size_t n_fds, BackendDevice **ret) {
        BackendFd *dev = NULL, *state = NULL, *intx = NULL;
        struct stat st;
        uint32_t serial = 0;
        SimDevice *s;

        for (size_t i = 0; i < n_fds; i++) {
                if (fds[i].fd < 0)
                        continue;
                if (strcmp(fds[i].name, "device") == 0)
                        dev = &fds[i];
                else if (strcmp(fds[i].name, "registers") == 0)
                        state = &fds[i];
                else if (sscanf(fds[i].name, "intx-%" SCNu32, &serial) == 1)
                        intx = &fds[i];
        }
        /* The device end is a socket whose peer the sim's group keeps (sim_get_fds()); the registers a
         * memfd of the state's size that says what it is. */
        if (!dev || !state || fstat(dev->fd, &st) < 0 || !S_ISSOCK(st.st_mode) || fstat(state->fd, &st) < 0 ||
            st.st_size != sizeof(SimDeviceState))
                return log_debug_errno(-EBADF, "sim: the fds of device %s were not kept.", device);

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->name = strdup(device);
        s->st = state_map(state->fd);
        if (!s->name || !s->st || memcmp(s->st->magic, SIM_DEVICE_STATE_MAGIC, sizeof(s->st->magic)) != 0 ||
            (intx && serial != s->st->intx_serial)) {
                s->device_fd = s->state_fd = s->intx_fd = -EBADF;
                sim_device_free(&s->base);
                return log_debug_errno(-EBADF, "sim: the registers of device %s are not a device's.", device);
        }
        s->base.ops = &sim_device_ops;
        s->container = c;
        s->device_fd = TAKE_FD(dev->fd);
        s->state_fd = TAKE_FD(state->fd);
        s->intx_fd = intx ? TAKE_FD(intx->fd) : -EBADF;
        *ret = &s->base;
        return 0;
}
