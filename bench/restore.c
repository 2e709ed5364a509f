/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Benchmark (not a test): how long a restarted daemon takes to restore N containers x M mappings (sim
 * backend), run under tests/integration/harness.py, which keeps the fds and restarts the daemon.
 *   restore [CONTAINERS] [MAPPINGS] */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#define BUS_NAME "org.vfiobroker.Broker1"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static const char *harness(const char *cmd) {
        static char answer[4096];
        char path[512];
        const char *dir = getenv("VFIO_BROKER_HARNESS");
        FILE *f;

        snprintf(path, sizeof(path), "%s/cmd", dir);
        f = fopen(path, "we");
        fprintf(f, "%s\n", cmd);
        fclose(f);
        snprintf(path, sizeof(path), "%s/ack", dir);
        f = fopen(path, "re");
        if (!fgets(answer, sizeof(answer), f))
                answer[0] = 0;
        fclose(f);
        return answer;
}

static void must(int r, const sd_bus_error *e, const char *what) {
        if (r < 0) {
                fprintf(stderr, "restore: %s: %s\n", what, e && e->message ? e->message : strerror(-r));
                exit(EXIT_FAILURE);
        }
}

int main(int argc, char *argv[]) {
        unsigned n_containers = argc > 1 ? (unsigned) atoi(argv[1]) : 100;
        unsigned n_mappings = argc > 2 ? (unsigned) atoi(argv[2]) : 1000;
        sd_bus *bus = NULL;
        char **paths = calloc(n_containers, sizeof(char *));
        int ram = memfd_create("ram", MFD_CLOEXEC);
        double t0, t_setup, t_restore;
        uint64_t total = 0;

        if (!paths || ram < 0 || ftruncate(ram, (off_t) n_mappings * 4096) < 0)
                return EXIT_FAILURE;
        must(sd_bus_open_system(&bus), NULL, "connect");

        t0 = now();
        for (unsigned i = 0; i < n_containers; i++) {
                sd_bus_error e = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                const char *p;
                char path[128];

                must(sd_bus_call_method(bus, BUS_NAME, "/org/vfiobroker/Broker1", BUS_NAME ".Manager", "CreateContainer",
                                        &e, &reply, "a{sv}", 0), &e, "CreateContainer");
                must(sd_bus_message_read(reply, "o", &p), NULL, "read");
                snprintf(path, sizeof(path), "%s", p);
                paths[i] = strdup(path);
                sd_bus_message_unref(reply);
                must(sd_bus_call_method(bus, BUS_NAME, path, BUS_NAME ".Container", "AttachGroup", &e, NULL, "u", i + 1),
                     &e, "AttachGroup");
                for (unsigned k = 0; k < n_mappings; k++)
                        must(sd_bus_call_method(bus, BUS_NAME, path, BUS_NAME ".Container", "Map", &e, NULL, "htttu", ram,
                                                (uint64_t) k * 4096, UINT64_C(4096), (uint64_t) k * 8192, UINT32_C(3)),
                             &e, "Map");
        }
        t_setup = now() - t0;

        harness("kill9");
        t0 = now();
        const char *a = harness("start");
        t_restore = now() - t0;
        if (strncmp(a, "started", 7) != 0) {
                fprintf(stderr, "restore: the daemon did not come back: %s", a);
                return EXIT_FAILURE;
        }
        for (unsigned i = 0; i < n_containers; i++) {
                uint32_t m = 0;
                sd_bus_error e = SD_BUS_ERROR_NULL;
                must(sd_bus_get_property_trivial(bus, BUS_NAME, paths[i], BUS_NAME ".Container", "Mappings", &e, 'u', &m),
                     &e, "Mappings");
                total += m;
        }
        printf("%-48s %10s\n", "restore benchmark (sim backend)", "figure");
        printf("%-48s %10u\n", "containers", n_containers);
        printf("%-48s %10u\n", "mappings per container", n_mappings);
        printf("%-48s %8.2f s\n", "set-up through the bus (state saved per change)", t_setup);
        printf("%-48s %8.3f s\n", "kill -9, restart to READY (restore)", t_restore);
        printf("%-48s %10" PRIu64 "\n", "mappings back after the restart", total);
        return total == (uint64_t) n_containers * n_mappings ? EXIT_SUCCESS : EXIT_FAILURE;
}
