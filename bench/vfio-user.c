/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vfio-user benchmark (sim backend, over the private bus of tests/integration/harness.py): a 4 KiB
 * DMA_MAP + DMA_UNMAP pair over the vfio-user socket, against the empty round trip on the same socket
 * (DEVICE_GET_INFO), and the same map/unmap pair as D-Bus Map/Unmap calls. Figures, not pass/fail. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <vfio-broker/vfio-broker.h>

#include "vfio-user-client.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void must(int r, const char *what) {
        if (r != 0) {
                fprintf(stderr, "vfio-user bench: %s failed: %d\n", what, r);
                exit(EXIT_FAILURE);
        }
}

int main(int argc, char *argv[]) {
        int rounds = argc > 1 ? atoi(argv[1]) : 20000;
        char dir[] = "/tmp/vfio-user-bench-XXXXXX", path[64];
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        vfio_broker *b = NULL;
        vfio_broker_container *c = NULL;
        int listener, fd, mem;
        double t0, empty, pair, dbus;

        if (!mkdtemp(dir))
                return EXIT_FAILURE;
        snprintf(path, sizeof(path), "%s/s", dir);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        must(listener < 0 || bind(listener, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(listener, 1) < 0,
             "listen");
        must(vfio_broker_open(&b), "connect");
        must(vfio_broker_container_new(b, "bench-vfio-user", &c), "CreateContainer");
        must(vfio_broker_container_attach_group(c, 1), "AttachGroup");
        must(vfio_broker_container_serve_vfio_user(c, "0000:00:01.0", listener), "ServeVfioUser");
        fd = vu_connect_path(path);
        must(fd < 0 || vu_negotiate(fd), "VERSION");
        mem = memfd_create("ram", MFD_CLOEXEC);
        must(mem < 0 || ftruncate(mem, 4096) < 0, "memfd");

        VfioUserDeviceInfo info = { sizeof(info) };
        t0 = now();
        for (int i = 0; i < rounds; i++)
                must(vu_call(fd, VFIO_USER_DEVICE_GET_INFO, &info, sizeof(info), NULL, 0, &info, sizeof(info), NULL,
                             NULL), "DEVICE_GET_INFO");
        empty = (now() - t0) / rounds;

        t0 = now();
        for (int i = 0; i < rounds; i++) {
                must(vu_dma_map(fd, mem, 0, 0x100000, 4096, 3), "DMA_MAP");
                must(vu_dma_unmap(fd, 0x100000, 4096, 0), "DMA_UNMAP");
        }
        pair = (now() - t0) / rounds;

        int dbus_rounds = rounds / 10 > 0 ? rounds / 10 : 1;
        t0 = now();
        for (int i = 0; i < dbus_rounds; i++) {
                must(vfio_broker_container_map(c, mem, 0, 4096, 0x100000, 3), "Map");
                must(vfio_broker_container_unmap(c, 0x100000, 4096), "Unmap");
        }
        dbus = (now() - t0) / dbus_rounds;

        printf("vfio-user empty round trip (DEVICE_GET_INFO): %8.1f us  (%d rounds)\n", empty * 1e6, rounds);
        printf("vfio-user 4 KiB DMA_MAP + DMA_UNMAP pair:     %8.1f us  (%.1fx the empty round trip)\n", pair * 1e6,
               pair / empty);
        printf("D-Bus 4 KiB Map + Unmap pair, for reference:  %8.1f us  (%d rounds)\n", dbus * 1e6, dbus_rounds);

        close(fd);
        vfio_broker_container_close(c);
        vfio_broker_unref(b);
        unlink(path);
        rmdir(dir);
        return EXIT_SUCCESS;
}
