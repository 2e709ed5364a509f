/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The broker's benchmark suite (sim backend, over the private bus of tests/integration/harness.py):
 * each figure with the floor it is measured against. Figures, not pass/fail. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#include <vfio-broker/vfio-broker.h>

#define BUS_NAME "org.vfiobroker.Broker1"
#define ROOT "/org/vfiobroker/Broker1"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void must(int r, vfio_broker *b, const char *what) {
        if (r < 0) {
                fprintf(stderr, "suite: %s: %s\n", what, b ? vfio_broker_error_message(b) : strerror(-r));
                exit(EXIT_FAILURE);
        }
}

/* A field of the daemon's /proc/PID/status in KiB ("VmRSS", "RssAnon", "RssShmem"), or -1. */
static long daemon_status_kib(const char *field) {
        char path[64], line[256];
        size_t n = strlen(field);
        long v = -1;
        const char *pid = getenv("VFIO_BROKER_DAEMON_PID");
        FILE *f;

        if (!pid)
                return -1;
        snprintf(path, sizeof(path), "/proc/%s/status", pid);
        if (!(f = fopen(path, "re")))
                return -1;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, field, n) == 0 && line[n] == ':') {
                        v = strtol(line + n + 1, NULL, 10);
                        break;
                }
        fclose(f);
        return v;
}

static long daemon_rss_kib(void) {
        return daemon_status_kib("VmRSS");
}

/* On-CPU time of a process's main thread (the daemon and dbus-daemon are single-threaded), from the
 * scheduler: what a call costs each process, whatever else the machine runs meanwhile. */
static double cpu_us(pid_t pid) {
        char path[64];
        unsigned long long ns = 0;
        FILE *f;

        if (pid <= 0)
                return 0;
        snprintf(path, sizeof(path), "/proc/%d/schedstat", (int) pid);
        if (!(f = fopen(path, "re")))
                return 0;
        if (fscanf(f, "%llu", &ns) != 1)
                ns = 0;
        fclose(f);
        return (double) ns / 1e3;
}

typedef struct CpuSample {
        double daemon, bus, client;
} CpuSample;

static pid_t daemon_pid, bus_pid;

static CpuSample cpu_sample(void) {
        return (CpuSample) { cpu_us(daemon_pid), cpu_us(bus_pid), cpu_us(getpid()) };
}

static CpuSample cpu_per(CpuSample a, CpuSample b, unsigned n) {
        return (CpuSample) { (b.daemon - a.daemon) / n, (b.bus - a.bus) / n, (b.client - a.client) / n };
}

static int compare_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

static bool seen_change;
static int on_changed(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        seen_change = true;
        return 0;
}

/* A Map+Unmap pair against two empty round trips on the same connection (dest NULL: a peer one). */
typedef struct PairCtx {
        sd_bus *ping;
        const char *dest;
        vfio_broker *b;
        vfio_broker_container *c;
        int ram;
} PairCtx;

enum { ROUNDS = 20, PER_ROUND = 100 };

typedef struct Paired {
        double floor_us, figure_us;                /* per empty call; per pair */
        double ratio_median, ratio_min, ratio_max; /* pair / two empty calls, round by round */
        CpuSample cpu_floor, cpu_figure;           /* per empty call; per pair */
} Paired;

/* Floor and figure in alternating rounds, so that both see the same machine: this one's speed moves
 * up to 3x within a run, and a floor taken seconds before its figure made the ratio a coin toss. The
 * ratio is the median of the rounds' ratios, with their range. */
static void measure_paired(const PairCtx *x, Paired *ret) {
        double ratios[ROUNDS], t_floor = 0, t_figure = 0;
        CpuSample cpu_floor = {}, cpu_figure = {};

        for (unsigned r = 0; r < ROUNDS; r++) {
                CpuSample s0 = cpu_sample();
                double t0 = now();
                for (unsigned i = 0; i < PER_ROUND; i++)
                        must(sd_bus_call_method(x->ping, x->dest, ROOT, "org.freedesktop.DBus.Peer", "Ping", NULL, NULL,
                                                ""), NULL, "Ping");
                double t1 = now();
                CpuSample s1 = cpu_sample();
                double t2 = now();
                for (unsigned i = 0; i < PER_ROUND; i++) {
                        must(vfio_broker_container_map(x->c, x->ram, 0, 4096, 0x100000, 3), x->b, "Map");
                        must(vfio_broker_container_unmap(x->c, 0x100000, 4096), x->b, "Unmap");
                }
                double t3 = now();
                CpuSample s2 = cpu_sample();

                t_floor += t1 - t0;
                t_figure += t3 - t2;
                ratios[r] = (t3 - t2) / (2 * (t1 - t0));
                cpu_floor = (CpuSample) { cpu_floor.daemon + s1.daemon - s0.daemon, cpu_floor.bus + s1.bus - s0.bus,
                                          cpu_floor.client + s1.client - s0.client };
                cpu_figure = (CpuSample) { cpu_figure.daemon + s2.daemon - s1.daemon, cpu_figure.bus + s2.bus - s1.bus,
                                           cpu_figure.client + s2.client - s1.client };
        }
        qsort(ratios, ROUNDS, sizeof(double), compare_double);
        *ret = (Paired) {
                .floor_us = t_floor / (ROUNDS * PER_ROUND) * 1e6,
                .figure_us = t_figure / (ROUNDS * PER_ROUND) * 1e6,
                .ratio_median = (ratios[ROUNDS / 2 - 1] + ratios[ROUNDS / 2]) / 2,
                .ratio_min = ratios[0],
                .ratio_max = ratios[ROUNDS - 1],
                .cpu_floor = cpu_per((CpuSample) {}, cpu_floor, ROUNDS * PER_ROUND),
                .cpu_figure = cpu_per((CpuSample) {}, cpu_figure, ROUNDS * PER_ROUND),
        };
}

static void print_paired(const char *what, const Paired *p) {
        char range[80];

        printf("%-52s %9.1f us %11.1f us %7.2fx\n", what, p->figure_us, 2 * p->floor_us, p->ratio_median);
        snprintf(range, sizeof(range), "  (median of %u rounds; they range)", ROUNDS);
        printf("%-52s %12s %14s %.2f-%.2fx\n", range, "", "", p->ratio_min, p->ratio_max);
}

static void print_cpu(const char *what, double figure, double floor) {
        printf("%-52s %9.1f us %11.1f us %7.2fx\n", what, figure, 2 * floor, figure / (2 * floor));
}

int main(void) {
        /* The harness runs the daemon with persistence (a state directory and an fd store) unless told
         * --no-fdstore; production runs with it. */
        const char *persistence = getenv("VFIO_BROKER_PERSISTENCE");
        printf("persistence: %s\n", persistence && strcmp(persistence, "on") == 0 ?
               "on (state directory and fd store, as under systemd)" : "off");
        vfio_broker *b;
        vfio_broker_container *c;
        sd_bus *bus;
        int ram = memfd_create("ram", MFD_CLOEXEC);
        double t, floor_us, update_us, insert_s, lookup_us, unmap_all_s, create_us, signal_us;
        long rss0, rss1;

        if (ram < 0 || ftruncate(ram, 512 * 1024 * 1024) < 0)
                return EXIT_FAILURE;
        must(vfio_broker_open(&b), NULL, "open");
        bus = vfio_broker_get_bus(b);
        if (getenv("VFIO_BROKER_DAEMON_PID"))
                daemon_pid = (pid_t) atoi(getenv("VFIO_BROKER_DAEMON_PID"));
        {
                sd_bus_creds *creds = NULL;
                if (sd_bus_get_owner_creds(bus, SD_BUS_CREDS_PID, &creds) >= 0)
                        (void) sd_bus_creds_get_pid(creds, &bus_pid);
                sd_bus_creds_unref(creds);
        }

        /* The peer-to-peer floor: an empty round trip on a connection from Manager.OpenConnection. */
        sd_bus *peer = NULL;
        {
                sd_bus_message *reply = NULL;
                int fd;
                must(sd_bus_call_method(bus, BUS_NAME, ROOT, BUS_NAME ".Manager", "OpenConnection", NULL, &reply, ""),
                     NULL, "OpenConnection");
                must(sd_bus_message_read(reply, "h", &fd), NULL, "read");
                fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                sd_bus_message_unref(reply);
                must(sd_bus_new(&peer), NULL, "peer");
                must(sd_bus_set_fd(peer, fd, fd), NULL, "peer fd");
                must(sd_bus_set_anonymous(peer, true), NULL, "anonymous");
                must(sd_bus_start(peer), NULL, "peer start");
        }

        must(vfio_broker_container_new(b, "bench", &c), b, "CreateContainer");
        must(vfio_broker_container_attach_group(c, 1), b, "AttachGroup");

        /* The library uses the peer connection on its own; a second handle without it measures the bus. */
        Paired via_bus, p2p;
        {
                vfio_broker *viabus;
                vfio_broker_container *cb;
                setenv("VFIO_BROKER_PEER", "0", 1);
                must(vfio_broker_open(&viabus), NULL, "open (bus)");
                unsetenv("VFIO_BROKER_PEER");
                must(vfio_broker_container_new(viabus, "bench-bus", &cb), viabus, "CreateContainer (bus)");
                must(vfio_broker_container_attach_group(cb, 3), viabus, "AttachGroup (bus)");
                measure_paired(&(PairCtx) { bus, BUS_NAME, viabus, cb, ram }, &via_bus);
                must(vfio_broker_container_close(cb), viabus, "Close (bus)");
                vfio_broker_unref(viabus);
        }
        measure_paired(&(PairCtx) { peer, NULL, b, c, ram }, &p2p);
        sd_bus_flush_close_unref(peer);
        floor_us = via_bus.floor_us;
        double p2p_floor_us = p2p.floor_us;

        /* Update of 1000 maps, per map. */
        vfio_broker_map *maps = calloc(65535, sizeof(*maps));
        for (unsigned i = 0; i < 65535; i++)
                maps[i] = (vfio_broker_map) { .memory = 0, .offset = (uint64_t) i * 4096, .size = 4096,
                                              .iova = 0x100000000ULL + (uint64_t) i * 8192, .flags = 3 };
        /* The median of 9, for the same reason as the rounds above. */
        enum { UPDATE_RUNS = 9 };
        double update_runs[UPDATE_RUNS];
        vfio_broker_unmap all = { 0, UINT64_C(1) << 62 };
        for (unsigned i = 0; i < UPDATE_RUNS; i++) {
                t = now();
                must(vfio_broker_container_update(c, NULL, 0, &ram, 1, maps, 1000), b, "Update 1000");
                update_runs[i] = (now() - t) / 1000 * 1e6;
                must(vfio_broker_container_update(c, &all, 1, NULL, 0, NULL, 0), b, "Update unmap");
        }
        qsort(update_runs, UPDATE_RUNS, sizeof(double), compare_double);
        update_us = update_runs[UPDATE_RUNS / 2];

        /* A container with 65535 mappings. */
        rss0 = daemon_rss_kib();
        long anon0 = daemon_status_kib("RssAnon"), shmem0 = daemon_status_kib("RssShmem");
        t = now();
        must(vfio_broker_container_update(c, NULL, 0, &ram, 1, maps, 65535), b, "Update 65535");
        insert_s = now() - t;
        /* The daemon replies before its loop iteration ends: a round trip waits for the rest. */
        must(sd_bus_call_method(bus, BUS_NAME, ROOT, "org.freedesktop.DBus.Peer", "Ping", NULL, NULL, ""), NULL, "Ping");
        rss1 = daemon_rss_kib();
        long anon1 = daemon_status_kib("RssAnon"), shmem1 = daemon_status_kib("RssShmem");
        t = now();
        for (unsigned i = 0; i < 1000; i++) /* each is refused as Overlap: a lookup in the table */
                if (vfio_broker_container_map(c, ram, 0, 4096, 0x100000000ULL + (uint64_t) (i * 61) * 8192, 3) != -EEXIST)
                        must(-EIO, b, "Overlap lookup");
        lookup_us = (now() - t) / 1000 * 1e6;
        t = now();
        must(vfio_broker_container_unmap(c, 0, UINT64_C(1) << 62), b, "Unmap all");
        unmap_all_s = now() - t;

        /* One-at-a-time Map (4 KiB, p2p, as a virtio-mem or vIOMMU VMM maps its granules) with about
         * 1000, 32000 and 65000 mappings in the container: filled with Update, then 500 single Maps
         * around the level, each timed; the median, since on a small machine single calls see
         * scheduling spikes that a mean would report as cost. */
        static const unsigned levels[] = { 1000, 32000, 65000 };
        enum { WINDOW = 500 };
        double single_us[3], *lat = calloc(WINDOW, sizeof(double));
        unsigned filled = 0;
        for (unsigned l = 0; l < 3; l++) {
                unsigned target = levels[l] - WINDOW / 2;
                if (target > filled)
                        must(vfio_broker_container_update(c, NULL, 0, &ram, 1, maps + filled, target - filled), b,
                             "Update fill");
                filled = target;
                for (unsigned i = 0; i < WINDOW; i++) {
                        t = now();
                        must(vfio_broker_container_map(c, ram, maps[filled + i].offset, 4096, maps[filled + i].iova, 3),
                             b, "Map one");
                        lat[i] = (now() - t) * 1e6;
                }
                qsort(lat, WINDOW, sizeof(double), compare_double);
                single_us[l] = lat[WINDOW / 2];
                filled += WINDOW;
        }
        free(lat);
        must(vfio_broker_container_unmap(c, 0, UINT64_C(1) << 62), b, "Unmap all");

        /* Map of a memfd the container does not hold yet, with 1024 distinct memfds held (a VMM with
         * many memory backends; each memory file is one fd in the store). */
        enum { FILES = 1024 };
        int *files = calloc(FILES + 200, sizeof(int));
        for (unsigned i = 0; i < FILES + 200; i++) {
                files[i] = memfd_create("file", MFD_CLOEXEC);
                if (files[i] < 0 || ftruncate(files[i], 4096) < 0)
                        must(-errno, NULL, "memfd");
        }
        for (unsigned i = 0; i < FILES; i++)
                must(vfio_broker_container_map(c, files[i], 0, 4096, 0x200000000ULL + (uint64_t) i * 4096, 3), b,
                     "Map file");
        t = now();
        for (unsigned i = FILES; i < FILES + 200; i++)
                must(vfio_broker_container_map(c, files[i], 0, 4096, 0x200000000ULL + (uint64_t) i * 4096, 3), b,
                     "Map new file");
        double file_us = (now() - t) / 200 * 1e6;
        must(vfio_broker_container_unmap(c, 0, UINT64_C(1) << 62), b, "Unmap all");
        for (unsigned i = 0; i < FILES + 200; i++)
                close(files[i]);
        free(files);
        free(maps);

        /* AttachGroup until a subscriber sees PropertiesChanged. */
        sd_bus *watcher = NULL;
        must(sd_bus_open_system(&watcher), NULL, "watcher");
        must(sd_bus_match_signal(watcher, NULL, BUS_NAME, vfio_broker_container_get_path(c),
                                 "org.freedesktop.DBus.Properties", "PropertiesChanged", on_changed, NULL), NULL, "match");
        double total = 0;
        for (unsigned i = 0; i < 200; i++) {
                seen_change = false;
                t = now();
                must(vfio_broker_container_attach_group(c, 2), b, "AttachGroup 2");
                while (!seen_change)
                        if (sd_bus_process(watcher, NULL) == 0)
                                sd_bus_wait(watcher, 100000);
                total += now() - t;
                must(vfio_broker_container_detach_group(c, 2), b, "DetachGroup 2");
                while (sd_bus_process(watcher, NULL) > 0)
                        ;
        }
        signal_us = total / 200 * 1e6;
        must(vfio_broker_container_close(c), b, "Close");

        /* 1000 containers. */
        vfio_broker_container **many = calloc(1000, sizeof(*many));
        t = now();
        for (unsigned i = 0; i < 1000; i++)
                must(vfio_broker_container_new(b, NULL, &many[i]), b, "CreateContainer x1000");
        create_us = (now() - t) / 1000 * 1e6;
        for (unsigned i = 0; i < 1000; i++)
                must(vfio_broker_container_close(many[i]), b, "Close x1000");
        free(many);

        printf("%-52s %12s %14s %8s\n", "benchmark (sim backend, private dbus-daemon)", "figure", "floor", "ratio");
        printf("%-52s %9.1f us %11.1f us %7.2fx\n", "empty round trip (Peer.Ping via dbus-daemon)", floor_us, floor_us, 1.0);
        printf("%-52s %9.1f us %11.1f us %7.2fx\n", "empty round trip, peer-to-peer (OpenConnection)", p2p_floor_us,
               p2p_floor_us, 1.0);
        print_paired("Map+Unmap pair via the bus", &via_bus);
        print_paired("Map+Unmap pair peer-to-peer (the library's default)", &p2p);
        /* The wall-clock ratios above move with whatever else the machine runs; CPU time per call does
         * much less: what each process spends on a pair against what it spends on two empty calls. */
        printf("%-52s %12s %14s %8s\n", "  on-CPU time per call (daemon/dbus-daemon/client)", "figure", "floor", "ratio");
        print_cpu("  daemon, Map+Unmap pair via the bus", via_bus.cpu_figure.daemon, via_bus.cpu_floor.daemon);
        print_cpu("  dbus-daemon, Map+Unmap pair via the bus", via_bus.cpu_figure.bus, via_bus.cpu_floor.bus);
        print_cpu("  client, Map+Unmap pair via the bus", via_bus.cpu_figure.client, via_bus.cpu_floor.client);
        print_cpu("  daemon, Map+Unmap pair p2p", p2p.cpu_figure.daemon, p2p.cpu_floor.daemon);
        printf("%-52s %9.1f us %11.1f us %8s\n", "  dbus-daemon, Map+Unmap pair p2p (signals only)",
               p2p.cpu_figure.bus, 2 * p2p.cpu_floor.bus, "-");
        print_cpu("  client, Map+Unmap pair p2p", p2p.cpu_figure.client, p2p.cpu_floor.client);
        printf("%-52s %9.2f us %14s %8s\n", "Update of 1000 maps, per map", update_us, "-", "-");
        printf("%-52s %10.3f s %14s %8s\n", "65535 mappings: insert (one Update)", insert_s, "-", "-");
        printf("%-52s %9.1f us %11.1f us %7.2fx\n", "65535 mappings: lookup (a refused overlapping Map, p2p)",
               lookup_us, p2p_floor_us, lookup_us / p2p_floor_us);
        printf("%-52s %10.3f s %14s %8s\n", "65535 mappings: unmap all (one Unmap)", unmap_all_s, "-", "-");
        for (unsigned l = 0; l < 3; l++) {
                char what[80];
                snprintf(what, sizeof(what), "one-at-a-time Map (p2p) at %u mappings, median", levels[l]);
                printf("%-52s %9.1f us %11.1f us %7.2fx\n", what, single_us[l], p2p_floor_us, single_us[l] / p2p_floor_us);
        }
        printf("%-52s %9.2f %14s %8s\n", "  Map at 65000 mappings / Map at 1000 (target <= 1.5)",
               single_us[2] / single_us[0], "-", "-");
        printf("%-52s %9.1f us %11.1f us %7.2fx\n", "Map of a new memfd, 1024 memfds held (p2p)", file_us,
               p2p_floor_us, file_us / p2p_floor_us);
        printf("%-52s %8ld B %14s %8s\n", "daemon RSS per mapping", rss0 >= 0 && rss1 >= 0 ? (rss1 - rss0) * 1024 / 65535 : -1,
               "-", "-");
        printf("%-52s %8ld B %14s %8s\n", "  of which heap and other anonymous memory", (anon1 - anon0) * 1024 / 65535, "-", "-");
        printf("%-52s %8ld B %14s %8s\n", "  of which shared memory (the state log)", (shmem1 - shmem0) * 1024 / 65535, "-", "-");
        printf("%-52s %9.1f us %11.1f us %7.2fx\n", "CreateContainer x1000, per container (p2p)", create_us,
               p2p_floor_us, create_us / p2p_floor_us);
        printf("%-52s %9.1f us %11.1f us %7.2fx\n", "AttachGroup (p2p) to PropertiesChanged at a subscriber",
               signal_us, p2p_floor_us + floor_us / 2, signal_us / (p2p_floor_us + floor_us / 2));
        vfio_broker_unref(b);
        sd_bus_flush_close_unref(watcher);
        return EXIT_SUCCESS;
}
