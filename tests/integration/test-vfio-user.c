/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The vfio-user face on the sim backend over the real bus, driven by a protocol client written here
 * (the peer QEMU would be): version negotiation, DMA_MAP with and without an fd as container mappings,
 * the sim's edu DMA through those mappings and nowhere else, interrupts on the client's eventfd, a
 * client killed or of another uid, and malformed messages that end only their own session. And
 * restarts of the daemon (SIGTERM without a stop job, SIGKILL): a client between messages keeps its
 * session on the same connection, one caught inside a message is disconnected with its mappings. */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <cmocka.h>

#include <vfio-broker/vfio-broker.h>

#include "client-util.h"
#include "macro.h"
#include "vfio-user-client.h"

#define MiB (UINT64_C(1) << 20)
#define DEVICE "0000:00:01.0"
#define IOVA UINT64_C(0x100000)
#define RAM_SIZE (2 * MiB)
#define EDU_BUFFER UINT64_C(0x40000)

static sd_bus *bus;
static char *container;
static char dir[] = "/tmp/vfio-user-test-XXXXXX";
static char sock_path[100];
static int listener = -EBADF;

static int vu_connect(void) {
        int fd = vu_connect_path(sock_path);
        assert_true(fd >= 0);
        return fd;
}

static int vu_open(void) {
        int fd = vu_connect();
        assert_int_equal(vu_negotiate(fd), 0);
        return fd;
}

#define dma_map vu_dma_map
#define dma_unmap vu_dma_unmap
#define region_write vu_region_write
#define region_read vu_region_read

static void bar_write64(int fd, uint64_t offset, uint64_t v) {
        assert_int_equal(region_write(fd, 0, offset, &v, 8), 0);
}

static uint64_t bar_read64(int fd, uint64_t offset) {
        uint64_t v = 0;
        assert_int_equal(region_read(fd, 0, offset, &v, 8), 0);
        return v;
}

/* As a guest driver would: bus mastering on in the command register. */
static void enable_bus_master(int fd) {
        uint16_t cmd = 0x6;
        assert_int_equal(region_write(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 4, &cmd, 2), 0);
}

static void edu_dma(int fd, uint64_t src, uint64_t dst, uint64_t count, uint64_t cmd) {
        bar_write64(fd, 0x80, src);
        bar_write64(fd, 0x88, dst);
        bar_write64(fd, 0x90, count);
        bar_write64(fd, 0x98, cmd | 1);
        assert_int_equal(bar_read64(fd, 0x98) & 1, 0); /* done */
}

/* True once the server has closed the connection (5 s at most). */
static bool disconnected(int fd) {
        uint8_t b[64];
        struct pollfd p = { fd, POLLIN, 0 };

        for (;;) {
                if (poll(&p, 1, 5000) <= 0)
                        return false;
                ssize_t n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno == ECONNRESET))
                        return true;
                if (n < 0)
                        return false;
        }
}

static uint32_t mappings(void) {
        return test_get_u32(bus, container, CONTAINER_IFACE, "Mappings");
}

static size_t served_devices(char *first, size_t size) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *s;
        size_t n = 0;

        assert_true(sd_bus_get_property(bus, BUS_NAME, container, CONTAINER_IFACE, "VfioUserDevices", &error, &m,
                                        "as") >= 0);
        assert_true(sd_bus_message_enter_container(m, 'a', "s") >= 0);
        while (sd_bus_message_read(m, "s", &s) > 0) {
                if (n == 0 && first)
                        snprintf(first, size, "%s", s);
                n++;
        }
        return n;
}

static int make_listener(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(fd, 8), 0);
        return fd;
}

static int setup(void **state) {
        bus = test_bus_open();
        container = test_create_container(bus, "vfio-user");
        test_call_ok(bus, container, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1);
        if (!mkdtemp(dir))
                return -1;
        /* nobody must be able to connect, to be refused by the broker rather than by the file system. */
        (void) chmod(dir, 0755);
        snprintf(sock_path, sizeof(sock_path), "%s/edu.sock", dir);
        listener = make_listener(sock_path);
        (void) chmod(sock_path, 0777);
        test_call_ok(bus, container, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", DEVICE, listener);
        return 0;
}

static int teardown(void **state) {
        test_call_ok(bus, container, CONTAINER_IFACE, "Close", NULL, "");
        safe_close(listener);
        (void) unlink(sock_path);
        (void) rmdir(dir);
        return 0;
}

/* --- tests --- */

static void test_serve_errors(void **state) {
        _cleanup_close_ int mem = test_memfd(MiB);
        _cleanup_close_ int unlistened = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        _cleanup_close_ int dgram = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        char path[160], first[64] = "";

        snprintf(path, sizeof(path), "%s/other.sock", dir);
        _cleanup_close_ int other = make_listener(path);

        assert_int_equal(served_devices(first, sizeof(first)), 1);
        assert_string_equal(first, DEVICE);
        assert_string_equal(test_call(bus, container, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", DEVICE, other),
                            BUS_NAME ".Error.Busy");
        assert_string_equal(test_call(bus, container, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", "0000:00:02.0",
                                      other), BUS_NAME ".Error.NoSuchDevice");
        assert_string_equal(test_call(bus, container, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", "../x", other),
                            "org.freedesktop.DBus.Error.InvalidArgs");
        assert_string_equal(test_call(bus, container, CONTAINER_IFACE, "StopVfioUser", NULL, "s", "0000:00:02.0"),
                            BUS_NAME ".Error.NoSuchDevice");
        /* Not a listening unix stream socket: refused before anything else is looked at. */
        assert_string_equal(test_call(bus, container, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", DEVICE, mem),
                            BUS_NAME ".Error.BadMemory");
        assert_string_equal(test_call(bus, container, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", DEVICE, unlistened),
                            BUS_NAME ".Error.BadMemory");
        assert_string_equal(test_call(bus, container, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", DEVICE, dgram),
                            BUS_NAME ".Error.BadMemory");
        /* The group of a served device stays attached. */
        assert_string_equal(test_call(bus, container, CONTAINER_IFACE, "DetachGroup", NULL, "u", 1),
                            BUS_NAME ".Error.Busy");
        assert_int_equal(served_devices(NULL, 0), 1);
        (void) unlink(path);
}

static void test_version(void **state) {
        static const char caps[] = "{\"capabilities\":{\"max_msg_fds\":8,\"pgsizes\":4096}}";
        uint8_t msg[sizeof(VfioUserVersion) + sizeof(caps)], reply[1024] = {};
        VfioUserVersion v = { 0, 7 }, rv;
        size_t n = 0;

        /* Something other than VERSION first: disconnected. */
        _cleanup_close_ int early = vu_connect();
        assert_int_equal(vu_send(early, VFIO_USER_DEVICE_RESET, 0, NULL, 0, NULL, 0, NULL), 0);
        assert_true(disconnected(early));
        safe_close(early);
        early = -EBADF;
        _cleanup_close_ int fd = vu_connect();

        memcpy(msg, &v, sizeof(v));
        memcpy(msg + sizeof(v), caps, sizeof(caps));
        assert_int_equal(vu_call(fd, VFIO_USER_VERSION, msg, sizeof(msg), NULL, 0, reply, sizeof(reply) - 1, &n, NULL), 0);
        memcpy(&rv, reply, sizeof(rv));
        assert_int_equal(rv.major, 0);
        assert_int_equal(rv.minor, 1); /* not more than proposed, not more than the broker speaks */
        assert_true(n > sizeof(rv) + 2);
        assert_int_equal(reply[n - 1], 0);
        assert_non_null(strstr((char *) reply + sizeof(rv), "\"max_msg_fds\":16"));
        assert_non_null(strstr((char *) reply + sizeof(rv), "\"pgsizes\":"));
        assert_non_null(strstr((char *) reply + sizeof(rv), "\"max_data_xfer_size\":1048576"));
        assert_null(strstr((char *) reply + sizeof(rv), "write_multiple"));

        /* The device as QEMU sees it at realize. */
        VfioUserDeviceInfo info = { sizeof(info) };
        assert_int_equal(vu_call(fd, VFIO_USER_DEVICE_GET_INFO, &info, sizeof(info), NULL, 0, &info, sizeof(info), &n,
                                 NULL), 0);
        assert_int_equal(info.flags, VFIO_USER_DEVICE_FLAGS_PCI | VFIO_USER_DEVICE_FLAGS_RESET);
        assert_int_equal(info.num_regions, VFIO_USER_PCI_NUM_REGIONS);
        assert_int_equal(info.num_irqs, VFIO_USER_PCI_NUM_IRQS);

        VfioUserRegionInfo ri = { sizeof(ri), 0, 0 };
        assert_int_equal(vu_call(fd, VFIO_USER_DEVICE_GET_REGION_INFO, &ri, sizeof(ri), NULL, 0, &ri, sizeof(ri), &n,
                                 NULL), 0);
        assert_int_equal(ri.size, MiB);
        assert_int_equal(ri.flags, VFIO_USER_REGION_INFO_FLAG_READ | VFIO_USER_REGION_INFO_FLAG_WRITE);
        ri = (VfioUserRegionInfo) { sizeof(ri), 0, VFIO_USER_PCI_CONFIG_REGION_INDEX };
        assert_int_equal(vu_call(fd, VFIO_USER_DEVICE_GET_REGION_INFO, &ri, sizeof(ri), NULL, 0, &ri, sizeof(ri), &n,
                                 NULL), 0);
        assert_int_equal(ri.size, 256);
        VfioUserIrqInfo ii = { sizeof(ii), 0, VFIO_USER_PCI_INTX_IRQ_INDEX };
        assert_int_equal(vu_call(fd, VFIO_USER_DEVICE_GET_IRQ_INFO, &ii, sizeof(ii), NULL, 0, &ii, sizeof(ii), &n,
                                 NULL), 0);
        assert_int_equal(ii.count, 1);
        assert_true(ii.flags & VFIO_USER_IRQ_INFO_EVENTFD);

        /* Config space: edu's identity, and BAR0 sizes as 1 MiB. */
        uint32_t id = 0, bar = UINT32_MAX;
        assert_int_equal(region_read(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 0, &id, 4), 0);
        assert_int_equal(id, 0x11e81234);
        assert_int_equal(region_read(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 8, &id, 4), 0);
        assert_int_equal(id >> 8, 0x00ff00);
        assert_int_equal(region_write(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 0x10, &bar, 4), 0);
        assert_int_equal(region_read(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 0x10, &bar, 4), 0);
        assert_int_equal(bar, 0xfff00000);
        bar = 0xfe000000;
        assert_int_equal(region_write(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 0x10, &bar, 4), 0);
        assert_int_equal(region_read(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 0x10, &bar, 4), 0);
        assert_int_equal(bar, 0xfe000000);

        /* BAR0 registers. */
        uint32_t live = 0x12345678;
        assert_int_equal(region_read(fd, 0, 0, &id, 4), 0);
        assert_int_equal(id, 0x010000ed);
        assert_int_equal(region_write(fd, 0, 4, &live, 4), 0);
        assert_int_equal(region_read(fd, 0, 4, &live, 4), 0);
        assert_int_equal(live, ~UINT32_C(0x12345678));

        /* A second VERSION is a protocol violation. */
        assert_int_equal(vu_send(fd, VFIO_USER_VERSION, 0, msg, sizeof(msg), NULL, 0, NULL), 0);
        assert_true(disconnected(fd));
}

static void test_dma(void **state) {
        _cleanup_close_ int fd = vu_open();
        _cleanup_close_ int mem = test_memfd(RAM_SIZE);
        uint8_t *ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
        uint8_t pattern[256], zero[256] = {}, buf[256];
        uint64_t before = test_get_u64(bus, container, CONTAINER_IFACE, "MappedBytes");

        assert_true(ram != MAP_FAILED);
        for (size_t i = 0; i < sizeof(pattern); i++)
                pattern[i] = (uint8_t) (i * 7 + 3);
        memcpy(ram + 0x1000, pattern, sizeof(pattern));

        /* Guest RAM with an fd: a mapping of the container, as Map. */
        assert_int_equal(dma_map(fd, mem, 0, IOVA, RAM_SIZE, 3), 0);
        assert_int_equal(mappings(), 1);
        assert_int_equal(test_get_u64(bus, container, CONTAINER_IFACE, "MappedBytes"), before + RAM_SIZE);
        assert_true(test_get_bool(bus, container, CONTAINER_IFACE, "BalloonInhibited"));
        /* Overlapping: EEXIST, and the session goes on. */
        assert_int_equal(dma_map(fd, mem, 0, IOVA + MiB, MiB, 3), EEXIST);
        /* The container's own checks, with the errno libvfio-broker gives for the same SPEC error
         * (Unaligned: EFAULT). */
        assert_int_equal(dma_map(fd, mem, 0x10, 0x10000000, MiB, 3), EFAULT);
        /* Without fd (anonymous memory, like QEMU's ROMs): acknowledged, not mapped. */
        assert_int_equal(dma_map(fd, -1, 0, 0x400000, 0x10000, 1), 0);
        assert_int_equal(dma_map(fd, -1, 0, 0x400000, 0x1000, 1), EEXIST);
        assert_int_equal(mappings(), 1);

        enable_bus_master(fd);
        /* RAM -> device buffer -> RAM elsewhere. */
        edu_dma(fd, IOVA + 0x1000, EDU_BUFFER, sizeof(pattern), 0);
        assert_int_equal(region_read(fd, 0, EDU_BUFFER, buf, sizeof(buf)), 0);
        assert_memory_equal(buf, pattern, sizeof(pattern));
        edu_dma(fd, EDU_BUFFER, IOVA + 0x8000, sizeof(pattern), 2);
        assert_memory_equal(ram + 0x8000, pattern, sizeof(pattern));

        /* Outside the mappings, into a mapping without fd, or straddling the end of guest RAM: nothing moves. */
        edu_dma(fd, EDU_BUFFER, 0x90000000, sizeof(pattern), 2);
        edu_dma(fd, EDU_BUFFER, 0x400000, sizeof(pattern), 2);
        edu_dma(fd, EDU_BUFFER, IOVA + RAM_SIZE - 16, sizeof(pattern), 2);
        assert_memory_equal(ram + RAM_SIZE - 16, zero, 16);
        assert_int_equal(region_write(fd, 0, EDU_BUFFER, zero, 64), 0);
        edu_dma(fd, 0x90000000, EDU_BUFFER, 64, 0);
        assert_int_equal(region_read(fd, 0, EDU_BUFFER, buf, 64), 0);
        assert_memory_equal(buf, zero, 64);

        /* A mapping the device may only read: the device reads it, a write to it moves nothing. */
        {
                _cleanup_close_ int ro = test_memfd(MiB);
                uint8_t *rom = mmap(NULL, MiB, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0);
                assert_true(rom != MAP_FAILED);
                memset(rom, 0xab, 64);
                assert_int_equal(dma_map(fd, ro, 0, 0x800000, MiB, VFIO_USER_DMA_MAP_FLAG_READ), 0);
                edu_dma(fd, 0x800000, EDU_BUFFER, 64, 0);
                assert_int_equal(region_read(fd, 0, EDU_BUFFER, buf, 64), 0);
                assert_memory_equal(buf, rom, 64);
                edu_dma(fd, EDU_BUFFER + 64, 0x800000 + 0x1000, 64, 2);
                assert_memory_equal(rom + 0x1000, zero, 64);
                assert_int_equal(dma_unmap(fd, 0x800000, MiB, 0), 0);
                munmap(rom, MiB);
        }

        /* Without bus mastering the device does not DMA at all. */
        {
                uint16_t cmd = 0x2;
                memset(ram + 0xb000, 0, 16);
                assert_int_equal(region_write(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 4, &cmd, 2), 0);
                edu_dma(fd, EDU_BUFFER, IOVA + 0xb000, 16, 2);
                assert_memory_equal(ram + 0xb000, zero, 16);
                enable_bus_master(fd);
                edu_dma(fd, EDU_BUFFER, IOVA + 0xb000, 16, 2);
                assert_int_equal(region_read(fd, 0, EDU_BUFFER, buf, 16), 0);
                assert_memory_equal(ram + 0xb000, buf, 16);
                assert_memory_not_equal(buf, zero, 16);
        }

        /* The interrupt goes to the client's eventfd. */
        _cleanup_close_ int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        VfioUserIrqSet set = { sizeof(set), VFIO_USER_IRQ_SET_DATA_EVENTFD | VFIO_USER_IRQ_SET_ACTION_TRIGGER,
                               VFIO_USER_PCI_INTX_IRQ_INDEX, 0, 1 };
        uint64_t ticks = 0;
        assert_int_equal(vu_call(fd, VFIO_USER_DEVICE_SET_IRQS, &set, sizeof(set), &efd, 1, NULL, 0, NULL, NULL), 0);
        edu_dma(fd, EDU_BUFFER, IOVA + 0x9000, 16, 2 | 4);
        assert_int_equal(read(efd, &ticks, sizeof(ticks)), (ssize_t) sizeof(ticks));
        assert_int_equal(ticks, 1);
        uint32_t irq = 0;
        assert_int_equal(region_read(fd, 0, 0x24, &irq, 4), 0);
        assert_int_equal(irq, 0x100);

        /* Unmap: a range cutting the mapping is refused, the exact one goes, the fd-less one too. */
        assert_int_equal(dma_unmap(fd, IOVA, MiB, 0), EINVAL);
        assert_int_equal(mappings(), 1);
        assert_int_equal(dma_unmap(fd, IOVA, RAM_SIZE, 0), 0);
        assert_int_equal(mappings(), 0);
        assert_int_equal(test_get_u64(bus, container, CONTAINER_IFACE, "MappedBytes"), before);
        assert_int_equal(dma_unmap(fd, 0x400000, 0x10000, 0), 0);
        /* Now the DMA faults. */
        memset(ram + 0xa000, 0, 16);
        edu_dma(fd, EDU_BUFFER, IOVA + 0xa000, 16, 2);
        assert_memory_equal(ram + 0xa000, zero, 16);

        /* UNMAP_ALL, as QEMU sends. */
        assert_int_equal(dma_map(fd, mem, 0, IOVA, RAM_SIZE, 3), 0);
        assert_int_equal(dma_unmap(fd, 0, 0, VFIO_USER_DMA_UNMAP_FLAG_ALL), 0);
        assert_int_equal(mappings(), 0);

        munmap(ram, RAM_SIZE);
}

static void test_client_killed(void **state) {
        _cleanup_close_ int mem = test_memfd(RAM_SIZE);
        int pipefd[2], status;
        char c;
        pid_t pid;

        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                /* The previous test's client closed its socket, but the daemon may not have seen it
                 * yet, and refuses a second client meanwhile: try again until it has. */
                int fd = -1;
                for (int i = 0; i < 50; i++) {
                        fd = vu_connect_path(sock_path);
                        if (fd >= 0 && vu_negotiate(fd) == 0)
                                break;
                        if (fd >= 0)
                                close(fd);
                        fd = -1;
                        usleep(100 * 1000);
                }
                if (fd < 0 || dma_map(fd, mem, 0, IOVA, RAM_SIZE, 3) != 0)
                        _exit(1);
                (void) !write(pipefd[1], "x", 1);
                pause();
                _exit(0);
        }
        close(pipefd[1]);
        assert_int_equal(read(pipefd[0], &c, 1), 1);
        close(pipefd[0]);
        assert_int_equal(mappings(), 1);

        /* Another client while the first is served: refused at once. */
        _cleanup_close_ int second = vu_connect();
        assert_true(disconnected(second));

        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        /* The mapping goes, the device stays served. */
        for (int i = 0; i < 50 && mappings() != 0; i++)
                usleep(100 * 1000);
        assert_int_equal(mappings(), 0);
        assert_int_equal(served_devices(NULL, 0), 1);

        /* The next client works, with the device state kept. */
        _cleanup_close_ int fd = vu_open();
        assert_int_equal(dma_map(fd, mem, 0, IOVA, RAM_SIZE, 3), 0);
        assert_int_equal(mappings(), 1);
        assert_int_equal(bar_read64(fd, 0) & UINT32_MAX, 0x010000ed);
}

static void test_other_uid(void **state) {
        int status;
        pid_t pid = fork();

        assert_true(pid >= 0);
        if (pid == 0) {
                if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
                        _exit(2);
                int fd = vu_connect();
                /* Refused: closed without an answer to VERSION. */
                int r = vu_negotiate(fd);
                _exit(r == -ECONNRESET || r == -EPIPE ? 0 : 10 + (r < 0 ? -r : r) % 100);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        /* And root, the container's uid, still gets in. */
        _cleanup_close_ int fd = vu_open();
}

static void test_malformed(void **state) {
        _cleanup_close_ int mem = test_memfd(RAM_SIZE);
        uint32_t before;
        int fd;

        /* A session that stays up across the others' failures, with a mapping. */
        _cleanup_close_ int keep = vu_open();
        assert_int_equal(dma_map(keep, mem, 0, IOVA, RAM_SIZE, 3), 0);
        before = mappings();

        /* Only one client at a time: the malformed ones need the slot, so the keeper leaves. */
        safe_close(keep);
        keep = -EBADF;
        for (int i = 0; i < 50 && mappings() != before - 1; i++)
                usleep(100 * 1000);
        assert_int_equal(mappings(), before - 1);

        /* Truncated header. */
        fd = vu_open();
        assert_int_equal(send(fd, "\x01\x00\x02\x00\x30\x00", 6, MSG_NOSIGNAL), 6);
        assert_int_equal(shutdown(fd, SHUT_WR), 0);
        assert_true(disconnected(fd));
        safe_close(fd);

        /* argsz lies (DMA_MAP's argsz is the structure's size). */
        fd = vu_open();
        VfioUserDmaMap m = { 64, 3, 0, IOVA, RAM_SIZE };
        assert_int_equal(vu_send(fd, VFIO_USER_DMA_MAP, 0, &m, sizeof(m), &mem, 1, NULL), 0);
        assert_true(disconnected(fd));
        assert_int_equal(mappings(), before - 1);
        safe_close(fd);

        /* msg_size says more than is sent: the session hangs until the client gives up. */
        fd = vu_open();
        VfioUserHeader h = { .msg_id = 9, .command = VFIO_USER_DEVICE_RESET, .msg_size = 4000 };
        assert_int_equal(send(fd, &h, sizeof(h), MSG_NOSIGNAL), (ssize_t) sizeof(h));
        assert_int_equal(shutdown(fd, SHUT_WR), 0);
        assert_true(disconnected(fd));
        safe_close(fd);

        /* A message larger than the broker accepts. */
        fd = vu_open();
        h.msg_size = UINT32_MAX;
        assert_int_equal(send(fd, &h, sizeof(h), MSG_NOSIGNAL), (ssize_t) sizeof(h));
        assert_true(disconnected(fd));
        safe_close(fd);

        /* 300 fds with one DMA_MAP: more than one sendmsg() may carry (the kernel's SCM_MAX_FD is 253), so
         * 253 come with the header and payload's first bytes and 47 with the rest. */
        fd = vu_open();
        {
                int fds[300];
                m = (VfioUserDmaMap) { sizeof(m), 3, 0, IOVA, RAM_SIZE };
                VfioUserHeader mh = { .msg_id = 77, .command = VFIO_USER_DMA_MAP, .msg_size = sizeof(mh) + sizeof(m) };
                uint8_t msg[sizeof(mh) + sizeof(m)];
                uint8_t control[CMSG_SPACE(sizeof(int) * 253)];
                struct iovec iov;
                struct msghdr hdr = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control };
                struct cmsghdr *c;

                for (int i = 0; i < 300; i++)
                        fds[i] = mem;
                memcpy(msg, &mh, sizeof(mh));
                memcpy(msg + sizeof(mh), &m, sizeof(m));

                iov = (struct iovec) { msg, 20 };
                hdr.msg_controllen = CMSG_SPACE(sizeof(int) * 253);
                c = CMSG_FIRSTHDR(&hdr);
                *c = (struct cmsghdr) { .cmsg_len = CMSG_LEN(sizeof(int) * 253), .cmsg_level = SOL_SOCKET,
                                        .cmsg_type = SCM_RIGHTS };
                memcpy(CMSG_DATA(c), fds, sizeof(int) * 253);
                assert_int_equal(sendmsg(fd, &hdr, MSG_NOSIGNAL), 20);

                iov = (struct iovec) { msg + 20, sizeof(msg) - 20 };
                hdr.msg_controllen = CMSG_SPACE(sizeof(int) * 47);
                c = CMSG_FIRSTHDR(&hdr);
                *c = (struct cmsghdr) { .cmsg_len = CMSG_LEN(sizeof(int) * 47), .cmsg_level = SOL_SOCKET,
                                        .cmsg_type = SCM_RIGHTS };
                memcpy(CMSG_DATA(c), fds, sizeof(int) * 47);
                (void) sendmsg(fd, &hdr, MSG_NOSIGNAL); /* may fail: the broker may have hung up already */
        }
        assert_true(disconnected(fd));
        assert_int_equal(mappings(), before - 1);
        safe_close(fd);

        /* Two fds with a DMA_MAP. */
        fd = vu_open();
        {
                int two[2] = { mem, mem };
                assert_int_equal(vu_send(fd, VFIO_USER_DMA_MAP, 0, &m, sizeof(m), two, 2, NULL), 0);
        }
        assert_true(disconnected(fd));
        safe_close(fd);

        /* A reply sent to the server. */
        fd = vu_open();
        assert_int_equal(vu_send(fd, VFIO_USER_DEVICE_RESET, VFIO_USER_FLAGS_TYPE_REPLY, NULL, 0, NULL, 0, NULL), 0);
        assert_true(disconnected(fd));
        safe_close(fd);

        /* Unknown command and DMA_MAP overlapping: an error each, and the session goes on. */
        fd = vu_open();
        assert_int_equal(vu_call(fd, 99, NULL, 0, NULL, 0, NULL, 0, NULL, NULL), EOPNOTSUPP);
        assert_int_equal(vu_call(fd, VFIO_USER_DEVICE_FEATURE, "abcd", 4, NULL, 0, NULL, 0, NULL, NULL), EOPNOTSUPP);
        assert_int_equal(dma_map(fd, mem, 0, IOVA, RAM_SIZE, 3), 0);
        assert_int_equal(dma_map(fd, mem, 0, IOVA, MiB, 3), EEXIST);
        /* Bad flags: refused, not fatal. */
        assert_int_equal(dma_map(fd, mem, 0, 0x10000000, MiB, 8), EINVAL);
        assert_int_equal(mappings(), before);
        assert_int_equal(bar_read64(fd, 0) & UINT32_MAX, 0x010000ed);
        safe_close(fd);
        for (int i = 0; i < 50 && mappings() != before - 1; i++)
                usleep(100 * 1000);

        /* The daemon serves on, on the bus too. */
        assert_int_equal(served_devices(NULL, 0), 1);
        fd = vu_open();
        assert_int_equal(bar_read64(fd, 0) & UINT32_MAX, 0x010000ed);
        safe_close(fd);
}

static void test_stop(void **state) {
        _cleanup_close_ int fd = vu_open();
        _cleanup_close_ int mem = test_memfd(RAM_SIZE);

        assert_int_equal(dma_map(fd, mem, 0, IOVA, RAM_SIZE, 3), 0);
        assert_int_equal(mappings(), 1);
        test_call_ok(bus, container, CONTAINER_IFACE, "StopVfioUser", NULL, "s", DEVICE);
        assert_true(disconnected(fd));
        assert_int_equal(mappings(), 0);
        assert_int_equal(served_devices(NULL, 0), 0);
        /* The group is free to go now, and back. */
        test_call_ok(bus, container, CONTAINER_IFACE, "DetachGroup", NULL, "u", 1);
        test_call_ok(bus, container, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1);
        test_call_ok(bus, container, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", DEVICE, listener);
        assert_int_equal(served_devices(NULL, 0), 1);
}

/* Close() with a client connected and mapped: the client is disconnected, everything goes, the group
 * is free again. */
static void test_close_with_client(void **state) {
        _cleanup_free_ char *other = test_create_container(bus, "vfio-user-close");
        _cleanup_close_ int mem = test_memfd(RAM_SIZE);
        char path[64];

        snprintf(path, sizeof(path), "%s/close.sock", dir);
        _cleanup_close_ int l = make_listener(path);
        test_call_ok(bus, other, CONTAINER_IFACE, "AttachGroup", NULL, "u", 3);
        test_call_ok(bus, other, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", "0000:00:03.0", l);
        _cleanup_close_ int fd = vu_connect_path(path);
        assert_true(fd >= 0);
        assert_int_equal(vu_negotiate(fd), 0);
        assert_int_equal(dma_map(fd, mem, 0, IOVA, RAM_SIZE, 3), 0);
        assert_int_equal(test_get_u32(bus, other, CONTAINER_IFACE, "Mappings"), 1);

        test_call_ok(bus, other, CONTAINER_IFACE, "Close", NULL, "");
        assert_true(disconnected(fd));
        assert_false(test_object_exists(bus, other));
        /* The group is free: another container takes it. */
        _cleanup_free_ char *again = test_create_container(bus, "vfio-user-again");
        test_call_ok(bus, again, CONTAINER_IFACE, "AttachGroup", NULL, "u", 3);
        test_call_ok(bus, again, CONTAINER_IFACE, "Close", NULL, "");
        (void) unlink(path);
}

/* The same through libvfio-broker, on a container of its own. */
static void test_library(void **state) {
        vfio_broker *b = NULL;
        vfio_broker_container *c = NULL;
        char path[64];
        _cleanup_close_ int mem = test_memfd(MiB);

        snprintf(path, sizeof(path), "%s/lib.sock", dir);
        _cleanup_close_ int l = make_listener(path);
        assert_int_equal(vfio_broker_open(&b), 0);
        assert_int_equal(vfio_broker_container_new(b, "vfio-user-lib", &c), 0);
        assert_int_equal(vfio_broker_container_serve_vfio_user(c, "0000:00:02.0", l), -ENODEV);
        assert_int_equal(vfio_broker_container_attach_group(c, 2), 0);
        assert_int_equal(vfio_broker_container_serve_vfio_user(c, "0000:00:02.0", mem), -EBADF);
        assert_int_equal(vfio_broker_container_serve_vfio_user(c, "0000:00:02.0", l), 0);
        assert_int_equal(vfio_broker_container_serve_vfio_user(c, "0000:00:02.0", l), -EBUSY);

        snprintf(sock_path, sizeof(sock_path), "%s", path);
        _cleanup_close_ int fd = vu_open();
        assert_int_equal(bar_read64(fd, 0) & UINT32_MAX, 0x010000ed);
        snprintf(sock_path, sizeof(sock_path), "%s/edu.sock", dir);

        assert_int_equal(vfio_broker_container_stop_vfio_user(c, "0000:00:02.0"), 0);
        assert_true(disconnected(fd));
        assert_int_equal(vfio_broker_container_stop_vfio_user(c, "0000:00:02.0"), -ENODEV);
        vfio_broker_container_close(c);
        vfio_broker_unref(b);
        (void) unlink(path);
}

/* --- restarts (the harness's stand-in for systemd's fd store keeps what the daemon stores) --- */

/* A new client, once the daemon has seen the previous one go (one client at a time). */
static int vu_open_retry(void) {
        for (int i = 0; i < 50; i++) {
                int fd = vu_connect_path(sock_path);
                if (fd >= 0 && vu_negotiate(fd) == 0)
                        return fd;
                if (fd >= 0)
                        close(fd);
                usleep(100 * 1000);
        }
        fail_msg("no vfio-user session at %s", sock_path);
        return -1;
}

static void restart_daemon(const char *how) {
        if (strcmp(how, "term") == 0)
                assert_string_equal(test_harness("term"), "exited 0");
        else
                assert_string_equal(test_harness("kill9"), "killed");
        assert_true(strncmp(test_harness("start"), "started", 7) == 0);
}

/* The names in the fd store of vfio-user sessions (v<container>-<server>-<name>), sorted as stored. */
static char *stored_sessions(void) {
        char buf[8192], *save = NULL, *out = calloc(1, 8192);

        assert_non_null(out);
        snprintf(buf, sizeof(buf), "%s", test_harness("fds"));
        for (char *p = strtok_r(buf, " ", &save); p; p = strtok_r(NULL, " ", &save))
                if (p[0] == 'v')
                        snprintf(out + strlen(out), 8192 - strlen(out), "%s%s", out[0] ? " " : "", p);
        return out;
}

static unsigned stored_clients(void) {
        _cleanup_free_ char *s = stored_sessions();
        unsigned n = 0;

        for (const char *p = s; (p = strstr(p, "-client-")); p++)
                n++;
        return n;
}

/* The store hears of removals by datagram, after the reply: wait for it. */
static void wait_stored_clients(unsigned n) {
        for (int i = 0; i < 200 && stored_clients() != n; i++)
                usleep(10 * 1000);
        assert_int_equal(stored_clients(), n);
}

/* Until the daemon has taken every byte the client sent (SIOCOUTQ: what the peer has not read yet). */
static void wait_consumed(int fd) {
        int queued = 1;

        for (int i = 0; i < 500 && queued > 0; i++) {
                assert_int_equal(ioctl(fd, SIOCOUTQ, &queued), 0);
                if (queued > 0)
                        usleep(10 * 1000);
        }
        assert_int_equal(queued, 0);
}

/* A client between messages is handed over untouched: the same connection goes on with its DMA table,
 * its mapping (counted once), its interrupt eventfd and the device's registers and buffer. */
static void session_survives(const char *how) {
        _cleanup_close_ int fd = vu_open_retry();
        _cleanup_close_ int mem = test_memfd(RAM_SIZE);
        _cleanup_close_ int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        uint8_t *ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
        uint64_t bytes = test_get_u64(bus, container, CONTAINER_IFACE, "MappedBytes"), ticks = 0;
        uint8_t pattern[256], buf[256];
        uint32_t live = 0x5a5a5a5a, v = 0;
        VfioUserIrqSet set = { sizeof(set), VFIO_USER_IRQ_SET_DATA_EVENTFD | VFIO_USER_IRQ_SET_ACTION_TRIGGER,
                               VFIO_USER_PCI_INTX_IRQ_INDEX, 0, 1 };

        assert_true(ram != MAP_FAILED);
        /* The device as a guest finds it at boot (an earlier test left INTx masked). */
        assert_int_equal(vu_call(fd, VFIO_USER_DEVICE_RESET, NULL, 0, NULL, 0, NULL, 0, NULL, NULL), 0);
        for (size_t i = 0; i < sizeof(pattern); i++)
                pattern[i] = (uint8_t) (i * 13 + 1);
        memcpy(ram + 0x1000, pattern, sizeof(pattern));
        assert_int_equal(dma_map(fd, mem, 0, IOVA, RAM_SIZE, 3), 0);
        assert_int_equal(dma_map(fd, -1, 0, 0x400000, 0x10000, 1), 0);
        enable_bus_master(fd);
        assert_int_equal(vu_call(fd, VFIO_USER_DEVICE_SET_IRQS, &set, sizeof(set), &efd, 1, NULL, 0, NULL, NULL), 0);
        edu_dma(fd, IOVA + 0x1000, EDU_BUFFER, sizeof(pattern), 0); /* RAM -> the device's buffer */
        assert_int_equal(region_write(fd, 0, 4, &live, 4), 0);
        assert_int_equal(mappings(), 1);
        _cleanup_free_ char *before = stored_sessions();
        assert_int_equal(stored_clients(), 1);

        restart_daemon(how);

        /* The same connection, the same device state. */
        assert_int_equal(bar_read64(fd, 0) & UINT32_MAX, 0x010000ed);
        assert_int_equal(region_read(fd, 0, 4, &v, 4), 0);
        assert_int_equal(v, ~live);
        assert_int_equal(region_read(fd, 0, EDU_BUFFER, buf, sizeof(buf)), 0);
        assert_memory_equal(buf, pattern, sizeof(pattern));
        /* DMA through the mapping made before the restart lands in the client's memory, and the
         * interrupt on the eventfd it set before. */
        edu_dma(fd, EDU_BUFFER, IOVA + 0x8000, sizeof(pattern), 2 | 4);
        assert_memory_equal(ram + 0x8000, pattern, sizeof(pattern));
        assert_int_equal(read(efd, &ticks, sizeof(ticks)), (ssize_t) sizeof(ticks));
        assert_int_equal(ticks, 1);
        /* The mapping is counted once, and the client's DMA table is as it was. */
        assert_int_equal(mappings(), 1);
        assert_int_equal(test_get_u64(bus, container, CONTAINER_IFACE, "MappedBytes"), bytes + RAM_SIZE);
        assert_int_equal(dma_map(fd, mem, 0, IOVA + MiB, MiB, 3), EEXIST);
        assert_int_equal(dma_unmap(fd, 0x400000, 0x1000, 0), EINVAL);
        assert_int_equal(dma_unmap(fd, 0x400000, 0x10000, 0), 0);
        /* Nothing stored twice, nothing left behind. */
        _cleanup_free_ char *after = stored_sessions();
        assert_string_equal(after, before);

        assert_int_equal(dma_unmap(fd, IOVA, RAM_SIZE, 0), 0);
        assert_int_equal(mappings(), 0);
        assert_int_equal(test_get_u64(bus, container, CONTAINER_IFACE, "MappedBytes"), bytes);
        /* The served device still holds its group, as a device fd does. */
        assert_string_equal(test_call(bus, container, CONTAINER_IFACE, "DetachGroup", NULL, "u", 1),
                            BUS_NAME ".Error.Busy");
        /* And once it leaves, its socket leaves the store. */
        safe_close(fd);
        fd = -EBADF;
        wait_stored_clients(0);
        munmap(ram, RAM_SIZE);
}

static void test_restart_term(void **state) {
        session_survives("term");
}

/* After a crash the session page says the client was between messages: taken back as well. */
static void test_restart_kill9(void **state) {
        session_survives("kill9");
}

/* A client caught inside a message (part of its header taken off the socket) cannot be handed over: on
 * SIGTERM and after a crash it is disconnected and its mappings dropped, as on any disconnect; the
 * device stays served. */
static void session_cut(const char *how) {
        _cleanup_close_ int fd = vu_open_retry();
        _cleanup_close_ int mem = test_memfd(RAM_SIZE);
        uint64_t bytes = test_get_u64(bus, container, CONTAINER_IFACE, "MappedBytes");
        VfioUserHeader h = { .msg_id = 5, .command = VFIO_USER_REGION_READ, .msg_size = sizeof(h) + 16 };

        assert_int_equal(dma_map(fd, mem, 0, IOVA, RAM_SIZE, 3), 0);
        assert_int_equal(mappings(), 1);
        assert_int_equal(send(fd, &h, 8, MSG_NOSIGNAL), 8);
        wait_consumed(fd);

        restart_daemon(how);

        assert_true(disconnected(fd));
        assert_int_equal(mappings(), 0);
        assert_int_equal(test_get_u64(bus, container, CONTAINER_IFACE, "MappedBytes"), bytes);
        wait_stored_clients(0);
        assert_int_equal(served_devices(NULL, 0), 1);
        _cleanup_close_ int next = vu_open_retry();
        assert_int_equal(bar_read64(next, 0) & UINT32_MAX, 0x010000ed);
}

static void test_restart_term_inside_message(void **state) {
        session_cut("term");
}

static void test_restart_kill9_inside_message(void **state) {
        session_cut("kill9");
}

/* A served device without a client, restarted, then stopped: nothing of the session stays in the store. */
static void test_restart_stop(void **state) {
        restart_daemon("kill9");
        assert_int_equal(served_devices(NULL, 0), 1);
        test_call_ok(bus, container, CONTAINER_IFACE, "StopVfioUser", NULL, "s", DEVICE);
        for (int i = 0; i < 200; i++) {
                _cleanup_free_ char *s = stored_sessions();
                if (s[0] == 0)
                        break;
                usleep(10 * 1000);
        }
        _cleanup_free_ char *left = stored_sessions();
        assert_string_equal(left, "");
        test_call_ok(bus, container, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", DEVICE, listener);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_serve_errors),
                cmocka_unit_test(test_version),
                cmocka_unit_test(test_dma),
                cmocka_unit_test(test_client_killed),
                cmocka_unit_test(test_other_uid),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_stop),
                cmocka_unit_test(test_close_with_client),
                cmocka_unit_test(test_library),
                cmocka_unit_test(test_restart_term),
                cmocka_unit_test(test_restart_kill9),
                cmocka_unit_test(test_restart_term_inside_message),
                cmocka_unit_test(test_restart_kill9_inside_message),
                cmocka_unit_test(test_restart_stop),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
