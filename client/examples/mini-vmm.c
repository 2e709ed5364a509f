/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A miniature VMM on libvfio-broker: guest RAM in a memfd, one container, one VFIO group, the RAM
 * mapped for DMA, a device fd, and the balloon state watched throughout. It is an unprivileged-style
 * client of vfio-brokerd: it never opens /dev/vfio itself. Build against an installed tree with
 *   cc mini-vmm.c $(pkg-config --cflags --libs vfio-broker) */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create() */
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vfio-broker/vfio-broker.h>

static int last_inhibited = -1;

static void on_balloon(vfio_broker *b, bool inhibited, uint32_t inhibitors, void *userdata) {
        last_inhibited = inhibited;
        printf("signal  Manager BalloonInhibited=%s BalloonInhibitors=%" PRIu32 "\n", inhibited ? "true" : "false",
               inhibitors);
}

static void on_container_balloon(vfio_broker_container *c, bool inhibited, void *userdata) {
        printf("signal  %s BalloonInhibited=%s\n", vfio_broker_container_get_path(c), inhibited ? "true" : "false");
}

/* Signals come on the bus while calls go over the peer connection, so they may trail the reply:
 * wait (at most 5 s) for the Manager's balloon state to reach what the last call implies. */
static void wait_balloon(vfio_broker *b, bool inhibited) {
        for (int i = 0; i < 500 && last_inhibited != inhibited; i++) {
                struct pollfd p = { .fd = vfio_broker_get_fd(b), .events = (short) vfio_broker_get_events(b) };
                while (vfio_broker_process(b) > 0)
                        ;
                if (last_inhibited != inhibited)
                        (void) poll(&p, 1, 10);
        }
        while (vfio_broker_process(b) > 0)
                ;
}

static vfio_broker_container *c;

static int fail(vfio_broker *b, const char *what, int r) {
        fprintf(stderr, "%s failed: %s (%s, %s)\n", what, vfio_broker_error_message(b), vfio_broker_error_name(b),
                strerror(-r));
        /* Dropping the connection is enough for the broker to release everything; free our side. */
        c = vfio_broker_container_free(c);
        vfio_broker_unref(b);
        return EXIT_FAILURE;
}

int main(int argc, char *argv[]) {
        const char *label = "mini-vmm", *hold_fifo = NULL, *device_name = NULL;
        uint64_t ram = 64ULL << 20, hotplug = 0;
        uint32_t group = 1;
        vfio_broker *b = NULL;
        vfio_broker_status status;
        vfio_broker_container_info info;
        char device_buf[64];
        int memfd, hotplug_fd = -1, device, r, opt;

        static const struct option options[] = {
                { "label",   required_argument, NULL, 'l' },
                { "group",   required_argument, NULL, 'g' },
                { "device",  required_argument, NULL, 'd' },
                { "ram-mib", required_argument, NULL, 'm' },
                { "hold",    required_argument, NULL, 'H' },
                { "virtio-mem-mib", required_argument, NULL, 'v' },
                {}
        };
        while ((opt = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (opt) {
                case 'l': label = optarg; break;
                case 'g': group = (uint32_t) strtoul(optarg, NULL, 0); break;
                case 'd': device_name = optarg; break;
                case 'm': ram = strtoull(optarg, NULL, 0) << 20; break;
                case 'H': hold_fifo = optarg; break;
                case 'v': hotplug = strtoull(optarg, NULL, 0) << 20; break;
                default:
                        fprintf(stderr, "Usage: %s [--label=S] [--group=N] [--device=NAME] [--ram-mib=N] [--hold=FIFO] "
                                "[--virtio-mem-mib=N]\n",
                                argv[0]);
                        return EXIT_FAILURE;
                }

        r = vfio_broker_open(&b);
        if (r < 0) {
                fprintf(stderr, "Cannot connect to the system bus: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        r = vfio_broker_watch_balloon(b, on_balloon, NULL);
        if (r < 0)
                return fail(b, "watching the balloon state", r);
        r = vfio_broker_get_status(b, &status);
        if (r < 0)
                return fail(b, "reading the broker's status", r);
        printf("broker  %s on the %s backend; BalloonInhibited=%s\n", status.version, status.backend,
               status.balloon_inhibited ? "true" : "false");
        vfio_broker_status_clear(&status);

        /* Guest RAM: a memfd, as QEMU's memory-backend-memfd. */
        memfd = memfd_create("guest-ram", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, (off_t) ram) < 0) {
                perror("memfd");
                return EXIT_FAILURE;
        }

        r = vfio_broker_container_new(b, label, &c);
        if (r < 0)
                return fail(b, "CreateContainer", r);
        printf("created container %s (label %s)\n", vfio_broker_container_get_path(c), label);
        (void) vfio_broker_container_watch_balloon(c, on_container_balloon, NULL);

        r = vfio_broker_container_attach_group(c, group);
        if (r < 0)
                return fail(b, "AttachGroup", r);
        printf("attached VFIO group %" PRIu32 "\n", group);
        wait_balloon(b, true);

        r = vfio_broker_container_map(c, memfd, 0, ram, 0, VFIO_BROKER_MAP_READ | VFIO_BROKER_MAP_WRITE);
        if (r < 0)
                return fail(b, "Map", r);
        printf("mapped %" PRIu64 " MiB of guest RAM at IOVA 0x0 (device may read and write)\n", ram >> 20);

        if (hotplug > 0) {
                /* Hotpluggable memory, as virtio-mem: a discardable region at 4 GiB in 2 MiB granules,
                 * nothing plugged; the guest plugs the first half, then gives one block back. */
                const uint64_t base = 4ULL << 30, granule = 2ULL << 20;
                hotplug_fd = memfd_create("virtio-mem", MFD_CLOEXEC);
                if (hotplug_fd < 0 || ftruncate(hotplug_fd, (off_t) hotplug) < 0) {
                        perror("memfd");
                        return EXIT_FAILURE;
                }
                r = vfio_broker_container_map_discardable(c, hotplug_fd, 0, hotplug, base,
                                                          VFIO_BROKER_MAP_READ | VFIO_BROKER_MAP_WRITE, granule, false);
                if (r < 0)
                        return fail(b, "MapDiscardable", r);
                r = vfio_broker_container_populate(c, base, hotplug / 2);
                if (r < 0)
                        return fail(b, "Populate", r);
                /* Unplug: out of the IOMMU first, only then may the memory go. */
                r = vfio_broker_container_discard(c, base, granule);
                if (r < 0)
                        return fail(b, "Discard", r);
                if (fallocate(hotplug_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t) granule) < 0)
                        perror("fallocate");
                printf("virtio-mem: %" PRIu64 " MiB discardable at IOVA 0x%" PRIx64 " in 2 MiB granules, %" PRIu64
                       " MiB plugged, one granule discarded and its memory freed\n", hotplug >> 20, base,
                       (hotplug / 2 - granule) >> 20);
        }

        if (!device_name) {
                vfio_broker_group *groups;
                size_t n;
                r = vfio_broker_list_groups(b, &groups, &n);
                if (r < 0)
                        return fail(b, "listing groups", r);
                for (size_t i = 0; i < n; i++)
                        if (groups[i].id == group && groups[i].devices && groups[i].devices[0])
                                snprintf(device_buf, sizeof(device_buf), "%s", groups[i].devices[0]);
                vfio_broker_groups_free(groups, n);
                device_name = device_buf;
        }
        device = vfio_broker_container_open_device(c, device_name);
        if (device < 0)
                return fail(b, "OpenDevice", device);
        printf("opened device %s: fd %d\n", device_name, device);

        r = vfio_broker_container_get_info(c, &info);
        if (r < 0)
                return fail(b, "reading the container", r);
        printf("container: Mappings=%" PRIu32 " MappedBytes=%" PRIu64 " BalloonInhibited=%s\n", info.mappings,
               info.mapped_bytes, info.balloon_inhibited ? "true" : "false");
        vfio_broker_container_info_clear(&info);

        if (hold_fifo) {
                /* Let the caller look at the broker while we hold everything. */
                char buf[16];
                printf("holding; write to %s to continue\n", hold_fifo);
                fflush(stdout);
                int fd = open(hold_fifo, O_RDONLY | O_CLOEXEC);
                if (fd >= 0) {
                        (void) !read(fd, buf, sizeof(buf));
                        close(fd);
                }
        }
        r = vfio_broker_container_unmap(c, 0, ram);
        if (r < 0)
                return fail(b, "Unmap", r);
        if (hotplug > 0) {
                r = vfio_broker_container_unmap(c, 4ULL << 30, hotplug);
                if (r < 0)
                        return fail(b, "Unmap", r);
                close(hotplug_fd);
        }
        printf("unmapped guest RAM\n");
        close(device);
        r = vfio_broker_container_detach_group(c, group);
        if (r < 0)
                return fail(b, "DetachGroup", r);
        printf("closed the device fd and detached group %" PRIu32 "\n", group);
        wait_balloon(b, false);

        r = vfio_broker_container_close(c);
        c = NULL; /* freed, also on failure */
        if (r < 0)
                return fail(b, "Close", r);
        printf("closed the container\n");
        close(memfd);
        vfio_broker_unref(b);
        return EXIT_SUCCESS;
}
