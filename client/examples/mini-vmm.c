/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A miniature VMM: guest RAM in a memfd, one container, one VFIO group, the RAM mapped for DMA, a
 * device fd, and the balloon state watched throughout. It is an unprivileged-style client of
 * vfio-brokerd: it never opens /dev/vfio itself. */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#include "macro.h"

#define BUS_NAME "org.vfiobroker.Broker1"
#define ROOT "/org/vfiobroker/Broker1"

static int print_balloon(sd_bus *bus, const char *when) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int inhibited = 0;
        uint32_t n = 0;
        int r;

        r = sd_bus_get_property_trivial(bus, BUS_NAME, ROOT, BUS_NAME ".Manager", "BalloonInhibited", &error, 'b',
                                        &inhibited);
        if (r >= 0)
                r = sd_bus_get_property_trivial(bus, BUS_NAME, ROOT, BUS_NAME ".Manager", "BalloonInhibitors",
                                                &error, 'u', &n);
        if (r < 0) {
                fprintf(stderr, "Reading the balloon state failed: %s\n", error.message ?: strerror(-r));
                return r;
        }
        printf("balloon %-28s BalloonInhibited=%s BalloonInhibitors=%" PRIu32 "\n", when,
               inhibited ? "true" : "false", n);
        return 0;
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const char *interface;
        int r;

        r = sd_bus_message_read(m, "s", &interface);
        if (r < 0)
                return 0;
        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return 0;
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                const char *name;
                if (sd_bus_message_read(m, "s", &name) < 0)
                        return 0;
                if (strcmp(name, "BalloonInhibited") == 0) {
                        int b;
                        if (sd_bus_message_read(m, "v", "b", &b) >= 0)
                                printf("signal  PropertiesChanged %s BalloonInhibited=%s\n",
                                       sd_bus_message_get_path(m), b ? "true" : "false");
                } else
                        (void) sd_bus_message_skip(m, "v");
                (void) sd_bus_message_exit_container(m);
        }
        return 0;
}

static void drain(sd_bus *bus) {
        /* Deliver signals that arrived so far; the reply to each call came after its signals. */
        while (sd_bus_process(bus, NULL) > 0)
                ;
}

static int call(sd_bus *bus, const char *path, const char *member, sd_bus_message **reply, const char *types,
                ...) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, BUS_NAME, path,
                                           strcmp(path, ROOT) == 0 ? BUS_NAME ".Manager" : BUS_NAME ".Container",
                                           member);
        if (r < 0)
                return r;
        va_start(ap, types);
        r = sd_bus_message_appendv(m, types, ap);
        va_end(ap);
        if (r < 0)
                return r;
        r = sd_bus_call(bus, m, 0, &error, reply);
        if (r < 0)
                fprintf(stderr, "%s failed: %s: %s\n", member, error.name, error.message);
        return r;
}

int main(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_close_ int memfd = -EBADF, device = -EBADF;
        _cleanup_free_ char *path = NULL;
        const char *label = "mini-vmm", *hold_fifo = NULL, *p;
        uint64_t ram = 64ULL << 20;
        uint32_t group = 1;
        const char *device_name = NULL;
        struct stat st;
        int r, c;

        static const struct option options[] = {
                { "label",  required_argument, NULL, 'l' },
                { "group",  required_argument, NULL, 'g' },
                { "device", required_argument, NULL, 'd' },
                { "ram-mib", required_argument, NULL, 'm' },
                { "hold",   required_argument, NULL, 'H' },
                {}
        };
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'l': label = optarg; break;
                case 'g': group = (uint32_t) strtoul(optarg, NULL, 0); break;
                case 'd': device_name = optarg; break;
                case 'm': ram = strtoull(optarg, NULL, 0) << 20; break;
                case 'H': hold_fifo = optarg; break;
                default:
                        fprintf(stderr, "Usage: %s [--label=S] [--group=N] [--device=NAME] [--ram-mib=N] "
                                        "[--hold=FIFO]\n", argv[0]);
                        return EXIT_FAILURE;
                }

        r = sd_bus_open_system(&bus);
        if (r < 0) {
                fprintf(stderr, "Cannot connect to the system bus: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        r = sd_bus_match_signal(bus, NULL, BUS_NAME, NULL, "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                on_properties_changed, NULL);
        if (r < 0)
                return EXIT_FAILURE;

        if (print_balloon(bus, "at start:") < 0)
                return EXIT_FAILURE;

        /* Guest RAM: a memfd, as QEMU's memory-backend-memfd. */
        memfd = memfd_create("guest-ram", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, (off_t) ram) < 0) {
                perror("memfd");
                return EXIT_FAILURE;
        }

        r = call(bus, ROOT, "CreateContainer", &reply, "a{sv}", 1, "Label", "s", label);
        if (r < 0)
                return EXIT_FAILURE;
        r = sd_bus_message_read(reply, "o", &p);
        if (r < 0 || !(path = strdup(p)))
                return EXIT_FAILURE;
        reply = sd_bus_message_unref(reply);
        printf("created container %s (label %s)\n", path, label);

        if (call(bus, path, "AttachGroup", NULL, "u", group) < 0)
                return EXIT_FAILURE;
        printf("attached VFIO group %" PRIu32 "\n", group);
        drain(bus);
        (void) print_balloon(bus, "after AttachGroup:");

        if (call(bus, path, "Map", NULL, "htttu", memfd, UINT64_C(0), ram, UINT64_C(0), UINT32_C(3)) < 0)
                return EXIT_FAILURE;
        printf("mapped %" PRIu64 " MiB of guest RAM at IOVA 0x0 (device may read and write)\n", ram >> 20);

        if (!device_name) {
                /* The first device of the group. */
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_strv_free_ char **devices = NULL;
                char gpath[128];
                snprintf(gpath, sizeof(gpath), ROOT "/group/%" PRIu32, group);
                r = sd_bus_get_property_strv(bus, BUS_NAME, gpath, BUS_NAME ".Group", "Devices", &error, &devices);
                if (r < 0 || !devices || !devices[0]) {
                        fprintf(stderr, "Cannot read the group's devices: %s\n", error.message ?: "none");
                        return EXIT_FAILURE;
                }
                device_name = strdupa(devices[0]);
        }
        if (call(bus, path, "OpenDevice", &reply, "s", device_name) < 0)
                return EXIT_FAILURE;
        r = sd_bus_message_read(reply, "h", &device);
        if (r < 0)
                return EXIT_FAILURE;
        device = fcntl(device, F_DUPFD_CLOEXEC, 3);
        reply = sd_bus_message_unref(reply);
        if (device < 0 || fstat(device, &st) < 0)
                return EXIT_FAILURE;
        printf("opened device %s: fd %d\n", device_name, device);

        {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                uint32_t n = 0;
                uint64_t bytes = 0;
                (void) sd_bus_get_property_trivial(bus, BUS_NAME, path, BUS_NAME ".Container", "Mappings", &error, 'u', &n);
                (void) sd_bus_get_property_trivial(bus, BUS_NAME, path, BUS_NAME ".Container", "MappedBytes", &error, 't', &bytes);
                printf("container: Mappings=%" PRIu32 " MappedBytes=%" PRIu64 "\n", n, bytes);
        }

        if (hold_fifo) {
                /* Let the caller look at the broker while we hold everything. */
                char buf[16];
                printf("holding; write to %s to continue\n", hold_fifo);
                fflush(stdout);
                int fd = open(hold_fifo, O_RDONLY | O_CLOEXEC);
                if (fd >= 0) {
                        (void) read(fd, buf, sizeof(buf));
                        close(fd);
                }
        }

        if (call(bus, path, "Unmap", NULL, "tt", UINT64_C(0), ram) < 0)
                return EXIT_FAILURE;
        printf("unmapped guest RAM\n");
        device = safe_close(device);
        if (call(bus, path, "DetachGroup", NULL, "u", group) < 0)
                return EXIT_FAILURE;
        printf("closed the device fd and detached group %" PRIu32 "\n", group);
        drain(bus);
        (void) print_balloon(bus, "after DetachGroup:");

        if (call(bus, path, "Close", NULL, "") < 0)
                return EXIT_FAILURE;
        printf("closed the container\n");
        return EXIT_SUCCESS;
}
