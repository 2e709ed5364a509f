/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A VMM for the system VM tests, talking to the packaged vfio-brokerd on the real system bus.
 *
 *   sysvm-vmm serve GROUP DEVICE DIR   container with GROUP attached, 8 MiB of memfd RAM mapped at IOVA
 *                                      1 MiB, DEVICE's edu DMAing through it in a loop (a round trip RAM ->
 *                                      device -> RAM with a new pattern every time, checked); answers the
 *                                      commands written to the fifo DIR/cmd on the fifo DIR/ack:
 *                                        stats     "ok=N fail=M" round trips so far
 *                                        probe N   Map a new 1 MiB, DMA into it, Unmap: "probe ok" or why not
 *                                        mappings  "mappings=N" from the broker, or its error
 *                                        close     Close() the container: "closed" or why not
 *                                        quit      exit (0 if no round trip ever failed)
 *   sysvm-vmm attach GROUP             CreateContainer + AttachGroup as the calling user: "attached" or the
 *                                      D-Bus error ("Name: message"), exit 0/1
 *   sysvm-vmm create                   CreateContainer only, same output
 *
 * The DMA loop runs in a thread of its own so that it keeps going while the daemon is away: the device
 * fd and the kernel's mappings do not need the daemon. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#include "edu.h"
#include "vm-client.h"

#define BUS_NAME "org.vfiobroker.Broker1"
#define CONTAINER BUS_NAME ".Container"
#define MiB (UINT64_C(1) << 20)
#define RAM_IOVA (1 * MiB)

static Edu edu;
static int ram = -1;
static pthread_mutex_t edu_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_ulong round_trips, failures;
static atomic_bool stopping;

/* RAM at iova_from -> device buffer -> RAM at iova_to, under the device lock. */
static bool round_trip(uint64_t iova_base, uint64_t from, uint64_t to, uint8_t seed) {
        bool ok;

        pthread_mutex_lock(&edu_lock);
        vm_fill(ram, from, seed, 1024);
        if (pwrite(ram, (uint8_t[1024]) {}, 1024, (off_t) to) != 1024)
                abort();
        ok = edu_dma_to_device(&edu, iova_base + from, 0, 1024) == 0 &&
             edu_dma_from_device(&edu, 0, iova_base + to, 1024) == 0 && vm_check(ram, to, seed, 1024);
        pthread_mutex_unlock(&edu_lock);
        return ok;
}

static void *dma_loop(void *arg) {
        for (uint8_t seed = 1; !atomic_load(&stopping); seed++) {
                if (round_trip(RAM_IOVA, 0x1000, 0x10000, seed))
                        atomic_fetch_add(&round_trips, 1);
                else
                        atomic_fetch_add(&failures, 1);
                usleep(20 * 1000);
        }
        return NULL;
}

static void answer(const char *dir, const char *text) {
        char path[512];
        FILE *f;

        snprintf(path, sizeof(path), "%s/ack", dir);
        f = fopen(path, "we");
        if (!f)
                return;
        fprintf(f, "%s\n", text);
        fclose(f);
}

static int serve(unsigned group, const char *device, const char *dir) {
        sd_bus *bus = NULL;
        _cleanup_free_ char *path = NULL;
        char line[256], text[512];
        pthread_t thread;
        int dev;

        ram = memfd_create("guest-ram", MFD_CLOEXEC);
        if (ram < 0 || ftruncate(ram, 32 * MiB) < 0 || sd_bus_open_system(&bus) < 0)
                return 1;
        path = vm_create_container(bus, "system-vm");
        if (!path || vm_call(bus, path, CONTAINER, "AttachGroup", NULL, "u", group) ||
            vm_call(bus, path, CONTAINER, "Map", NULL, "htttu", ram, UINT64_C(0), 8 * MiB, RAM_IOVA, UINT32_C(3)))
                return 1;
        dev = vm_open_device(bus, path, device);
        if (dev < 0 || edu_open(&edu, dev) < 0 || !round_trip(RAM_IOVA, 0x1000, 0x10000, 0xa5))
                return 1;
        if (pthread_create(&thread, NULL, dma_loop, NULL) != 0)
                return 1;
        printf("serving %s\n", path);
        fflush(stdout);

        for (;;) {
                FILE *f;

                snprintf(text, sizeof(text), "%s/cmd", dir);
                f = fopen(text, "re");
                if (!f)
                        return 1;
                if (!fgets(line, sizeof(line), f))
                        line[0] = 0;
                fclose(f);
                line[strcspn(line, "\n")] = 0;

                if (strcmp(line, "stats") == 0) {
                        snprintf(text, sizeof(text), "ok=%lu fail=%lu", atomic_load(&round_trips),
                                 atomic_load(&failures));
                } else if (strncmp(line, "probe ", 6) == 0) {
                        /* A new region after whatever happened: the broker still runs this container. */
                        unsigned n = (unsigned) atoi(line + 6) % 16;
                        uint64_t offset = 8 * MiB + n * MiB, iova = 64 * MiB + n * 2 * MiB;
                        const char *err = vm_call(bus, path, CONTAINER, "Map", NULL, "htttu", ram, offset, 1 * MiB,
                                                  iova, UINT32_C(3));
                        if (err)
                                snprintf(text, sizeof(text), "probe Map failed: %s", err);
                        else if (!round_trip(iova - offset, offset + 0x100, offset + 0x8000, (uint8_t) (0x30 + n)))
                                snprintf(text, sizeof(text), "probe DMA into the new mapping failed");
                        else if ((err = vm_call(bus, path, CONTAINER, "Unmap", NULL, "tt", iova, 1 * MiB)))
                                snprintf(text, sizeof(text), "probe Unmap failed: %s", err);
                        else
                                snprintf(text, sizeof(text), "probe ok");
                } else if (strcmp(line, "mappings") == 0) {
                        sd_bus_error error = SD_BUS_ERROR_NULL;
                        uint32_t m = 0;
                        if (sd_bus_get_property_trivial(bus, BUS_NAME, path, CONTAINER, "Mappings", &error, 'u', &m) < 0)
                                snprintf(text, sizeof(text), "mappings=error %s", error.name);
                        else
                                snprintf(text, sizeof(text), "mappings=%" PRIu32, m);
                        sd_bus_error_free(&error);
                } else if (strcmp(line, "close") == 0) {
                        const char *err = vm_call(bus, path, CONTAINER, "Close", NULL, "");
                        snprintf(text, sizeof(text), "%s", err ? err : "closed");
                } else if (strcmp(line, "quit") == 0) {
                        atomic_store(&stopping, true);
                        pthread_join(thread, NULL);
                        snprintf(text, sizeof(text), "ok=%lu fail=%lu", atomic_load(&round_trips),
                                 atomic_load(&failures));
                        answer(dir, text);
                        close(dev);
                        sd_bus_flush_close_unref(bus);
                        return atomic_load(&failures) ? 1 : 0;
                } else
                        snprintf(text, sizeof(text), "unknown command \"%s\"", line);
                answer(dir, text);
        }
}

static int attach(int argc, char *argv[]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        sd_bus *bus = NULL;
        const char *err, *path = NULL;

        if (sd_bus_open_system(&bus) < 0) {
                printf("cannot connect to the system bus\n");
                return 1;
        }
        err = vm_call(bus, "/org/vfiobroker/Broker1", BUS_NAME ".Manager", "CreateContainer", &reply, "a{sv}", 1,
                      "Label", "s", "system-vm-user");
        if (!err && sd_bus_message_read(reply, "o", &path) < 0)
                err = "(malformed reply)";
        if (!err && argc > 2)
                err = vm_call(bus, path, CONTAINER, "AttachGroup", NULL, "u", (unsigned) atoi(argv[2]));
        printf("%s\n", err ? err : argc > 2 ? "attached" : "created");
        reply = sd_bus_message_unref(reply);
        sd_bus_flush_close_unref(bus);
        return err ? 1 : 0;
}

int main(int argc, char *argv[]) {
        if (argc == 5 && strcmp(argv[1], "serve") == 0)
                return serve((unsigned) atoi(argv[2]), argv[3], argv[4]);
        if ((argc == 3 && strcmp(argv[1], "attach") == 0) || (argc == 2 && strcmp(argv[1], "create") == 0))
                return attach(argc, argv);
        fprintf(stderr, "usage: sysvm-vmm serve GROUP DEVICE DIR | attach GROUP | create\n");
        return 2;
}
