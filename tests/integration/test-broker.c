/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The broker's contract as a VMM sees it, over a real bus. Runs against the sim backend on the host
 * (tests/integration) and against the real kernel in the VM (tests/vm), so the two cannot drift:
 * nothing here depends on the backend except where it says so. Group numbers and devices are
 * discovered from the Group objects. Argument: an optional cmocka test-name filter. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

#define MiB (UINT64_C(1) << 20)
#define ERR(x) "org.vfiobroker.Broker1.Error." x
#define INVALID_ARGS "org.freedesktop.DBus.Error.InvalidArgs"
#define ACCESS_DENIED "org.freedesktop.DBus.Error.AccessDenied"

static sd_bus *bus;
static TestGroup groups[64];
static size_t n_groups;
static const TestGroup *viable[2];
static const TestGroup *not_viable;
static bool is_sim;

static int setup(void **state) {
        _cleanup_free_ char *backend = NULL;
        size_t n_viable = 0;

        bus = test_bus_open();
        n_groups = test_list_groups(bus, groups, ELEMENTSOF(groups));
        for (size_t i = 0; i < n_groups; i++) {
                if (groups[i].viable && groups[i].free && n_viable < ELEMENTSOF(viable))
                        viable[n_viable++] = &groups[i];
                if (!groups[i].viable && !not_viable)
                        not_viable = &groups[i];
        }
        if (n_viable < 2) {
                fprintf(stderr, "need two free viable groups, found %zu\n", n_viable);
                return -1;
        }
        backend = test_get_string(bus, ROOT_PATH, MANAGER_IFACE, "Backend", 's');
        is_sim = strcmp(backend, "sim") == 0;
        return 0;
}

static int teardown(void **state) {
        sd_bus_flush_close_unref(bus);
        return 0;
}

static uint32_t inhibitors(void) {
        return test_get_u32(bus, ROOT_PATH, MANAGER_IFACE, "BalloonInhibitors");
}

static void expect_error(const char *got, const char *want, const char *what) {
        if (!got || strcmp(got, want) != 0)
                fail_msg("%s: expected %s, got %s", what, want, got ?: "success");
}

static void test_manager(void **state) {
        _cleanup_free_ char *version = test_get_string(bus, ROOT_PATH, MANAGER_IFACE, "Version", 's');
        _cleanup_free_ char *backend = test_get_string(bus, ROOT_PATH, MANAGER_IFACE, "Backend", 's');

        assert_true(strlen(version) > 0);
        assert_true(strcmp(backend, "sim") == 0 || strcmp(backend, "vfio-type1") == 0);
        assert_false(test_get_bool(bus, ROOT_PATH, MANAGER_IFACE, "BalloonInhibited"));
        assert_int_equal(inhibitors(), 0);
}

static void test_groups(void **state) {
        for (size_t i = 0; i < n_groups; i++) {
                char path[128];
                snprintf(path, sizeof(path), ROOT_PATH "/group/%" PRIu32, groups[i].id);
                assert_int_equal(test_get_u32(bus, path, GROUP_IFACE, "Id"), groups[i].id);
                assert_true(strlen(groups[i].device) >= 7);
                assert_true(groups[i].free);
        }
        if (is_sim) {
                /* The documented default topology. */
                assert_int_equal(n_groups, 6);
                assert_non_null(not_viable);
                assert_int_equal(not_viable->id, 6);
                assert_string_equal(groups[4].device, "0000:00:05.0");
        }
}

static int count_interfaces_signal(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        (*(int *) userdata)++;
        return 0;
}

static void test_container_lifecycle(void **state) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *added_slot = NULL, *removed_slot = NULL;
        _cleanup_free_ char *path = NULL, *owner = NULL, *label = NULL;
        const char *unique;
        uint32_t gs[8];
        int added = 0, removed = 0;

        assert_true(sd_bus_match_signal(bus, &added_slot, BUS_NAME, ROOT_PATH, "org.freedesktop.DBus.ObjectManager",
                                        "InterfacesAdded", count_interfaces_signal, &added) >= 0);
        assert_true(sd_bus_match_signal(bus, &removed_slot, BUS_NAME, ROOT_PATH, "org.freedesktop.DBus.ObjectManager",
                                        "InterfacesRemoved", count_interfaces_signal, &removed) >= 0);

        path = test_create_container(bus, "vm-lifecycle");
        assert_true(strncmp(path, ROOT_PATH "/container/", strlen(ROOT_PATH "/container/")) == 0);
        assert_true(test_object_exists(bus, path));

        assert_true(sd_bus_get_unique_name(bus, &unique) >= 0);
        owner = test_get_string(bus, path, CONTAINER_IFACE, "Owner", 's');
        assert_string_equal(owner, unique);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "UID"), getuid());
        label = test_get_string(bus, path, CONTAINER_IFACE, "Label", 's');
        assert_string_equal(label, "vm-lifecycle");
        assert_int_equal(test_get_au(bus, path, CONTAINER_IFACE, "Groups", gs, 8), 0);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 0);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 0);
        assert_false(test_get_bool(bus, path, CONTAINER_IFACE, "BalloonInhibited"));
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "PageSizes"), 0);

        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        assert_false(test_object_exists(bus, path));
        expect_error(test_call(bus, path, CONTAINER_IFACE, "Close", NULL, ""), "org.freedesktop.DBus.Error.UnknownObject",
                     "Close on a closed container");

        for (int i = 0; i < 50 && (added < 1 || removed < 1); i++)
                if (sd_bus_process(bus, NULL) == 0)
                        sd_bus_wait(bus, 100000);
        assert_int_equal(added, 1);
        assert_int_equal(removed, 1);

        /* A container without a label. */
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *p;
        test_call_ok(bus, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0);
        assert_true(sd_bus_message_read(reply, "o", &p) >= 0);
        _cleanup_free_ char *empty = test_get_string(bus, p, CONTAINER_IFACE, "Label", 's');
        assert_string_equal(empty, "");
        test_call_ok(bus, p, CONTAINER_IFACE, "Close", NULL, "");
}

static void test_attach_map_signals(void **state) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL, *ranges = NULL;
        _cleanup_free_ char *path = NULL, *gcontainer = NULL;
        _cleanup_close_ int ram = test_memfd(8 * MiB), device = -EBADF;
        ChangeLog *log = calloc(1, sizeof(ChangeLog));
        char gpath[128];
        uint32_t gs[8];
        uint64_t first, last;
        size_t n_ranges = 0;
        int fd;

        assert_non_null(log);
        path = test_create_container(bus, "vm-signals");
        assert_true(test_watch_changes(bus, log, &slot) >= 0);

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id);
        assert_true(test_wait_change(bus, log, path, CONTAINER_IFACE, "Groups"));
        assert_true(test_wait_change(bus, log, path, CONTAINER_IFACE, "BalloonInhibited"));
        assert_true(test_wait_change(bus, log, path, CONTAINER_IFACE, "IovaRanges"));
        assert_true(test_wait_change(bus, log, path, CONTAINER_IFACE, "PageSizes"));
        assert_true(test_wait_change(bus, log, ROOT_PATH, MANAGER_IFACE, "BalloonInhibited"));
        assert_true(test_wait_change(bus, log, ROOT_PATH, MANAGER_IFACE, "BalloonInhibitors"));
        snprintf(gpath, sizeof(gpath), ROOT_PATH "/group/%" PRIu32, viable[0]->id);
        assert_true(test_wait_change(bus, log, gpath, GROUP_IFACE, "Container"));

        assert_int_equal(test_get_au(bus, path, CONTAINER_IFACE, "Groups", gs, 8), 1);
        assert_int_equal(gs[0], viable[0]->id);
        assert_true(test_get_bool(bus, path, CONTAINER_IFACE, "BalloonInhibited"));
        assert_true(test_get_bool(bus, ROOT_PATH, MANAGER_IFACE, "BalloonInhibited"));
        assert_int_equal(inhibitors(), 1);
        gcontainer = test_get_string(bus, gpath, GROUP_IFACE, "Container", 'o');
        assert_string_equal(gcontainer, path);

        /* The IOMMU's view: 4 KiB pages, and never the MSI window. */
        uint64_t pgsizes = test_get_u64(bus, path, CONTAINER_IFACE, "PageSizes");
        assert_true(pgsizes & 4096);
        assert_true(sd_bus_get_property(bus, BUS_NAME, path, CONTAINER_IFACE, "IovaRanges", NULL, &ranges, "a(tt)") >= 0);
        assert_true(sd_bus_message_enter_container(ranges, 'a', "(tt)") >= 0);
        while (sd_bus_message_read(ranges, "(tt)", &first, &last) > 0) {
                assert_true(first <= last);
                assert_false(first <= 0xfee00000 && last >= 0xfee00000);
                n_ranges++;
        }
        assert_true(n_ranges >= 2);
        if (is_sim)
                assert_int_equal(pgsizes, 0x40201000);

        /* The kernel's mapping budget: 65535 by default, on both backends. */
        uint32_t budget = test_get_u32(bus, path, CONTAINER_IFACE, "DmaAvailable");
        assert_int_equal(budget, 65535);

        log->n = 0;
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 2 * MiB, 2 * MiB, UINT32_C(3));
        assert_true(test_wait_change(bus, log, path, CONTAINER_IFACE, "DmaAvailable"));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "DmaAvailable"), budget - 1);
        assert_true(test_wait_change(bus, log, path, CONTAINER_IFACE, "Mappings"));
        assert_true(test_wait_change(bus, log, path, CONTAINER_IFACE, "MappedBytes"));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 1);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 2 * MiB);

        /* A read-only fd may back a mapping the device only reads. */
        {
                char proc[64];
                snprintf(proc, sizeof(proc), "/proc/self/fd/%d", ram);
                _cleanup_close_ int ro = open(proc, O_RDONLY | O_CLOEXEC);
                assert_true(ro >= 0);
                test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ro, 4 * MiB, 2 * MiB, 4 * MiB,
                             UINT32_C(1));
        }
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 2);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 4 * MiB);

        test_call_ok(bus, path, CONTAINER_IFACE, "OpenDevice", &reply, "s", viable[0]->device);
        assert_true(sd_bus_message_read(reply, "h", &fd) >= 0);
        device = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        assert_true(device >= 0);
        reply = sd_bus_message_unref(reply);

        /* One Unmap removes every mapping inside the range. */
        log->n = 0;
        test_call_ok(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", 2 * MiB, 4 * MiB);
        assert_true(test_wait_change(bus, log, path, CONTAINER_IFACE, "MappedBytes"));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 0);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 0);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "DmaAvailable"), budget);

        /* The device fd holds the group. */
        expect_error(test_call(bus, path, CONTAINER_IFACE, "DetachGroup", NULL, "u", viable[0]->id), ERR("Busy"),
                     "DetachGroup with a device fd open");
        device = safe_close(device);
        log->n = 0;
        test_call_ok(bus, path, CONTAINER_IFACE, "DetachGroup", NULL, "u", viable[0]->id);
        assert_true(test_wait_change(bus, log, path, CONTAINER_IFACE, "BalloonInhibited"));
        assert_true(test_wait_change(bus, log, ROOT_PATH, MANAGER_IFACE, "BalloonInhibited"));
        assert_true(test_wait_change(bus, log, gpath, GROUP_IFACE, "Container"));
        assert_false(test_get_bool(bus, path, CONTAINER_IFACE, "BalloonInhibited"));
        assert_int_equal(inhibitors(), 0);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "PageSizes"), 0);

        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        free(log);
}

/* What a subscriber sees of a container's mapping counters: how many PropertiesChanged carried them,
 * and the last values. */
typedef struct CounterWatch {
        const char *path;
        unsigned signals;
        uint32_t mappings;
        uint64_t mapped_bytes;
} CounterWatch;

static int on_counters(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        CounterWatch *w = userdata;
        const char *iface, *name;
        bool seen = false;

        if (strcmp(sd_bus_message_get_path(m), w->path) != 0 || sd_bus_message_read(m, "s", &iface) < 0 ||
            sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return 0;
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                assert_true(sd_bus_message_read(m, "s", &name) >= 0);
                if (strcmp(name, "Mappings") == 0) {
                        assert_true(sd_bus_message_read(m, "v", "u", &w->mappings) >= 0);
                        seen = true;
                } else if (strcmp(name, "MappedBytes") == 0)
                        assert_true(sd_bus_message_read(m, "v", "t", &w->mapped_bytes) >= 0);
                else
                        assert_true(sd_bus_message_skip(m, "v") >= 0);
                assert_true(sd_bus_message_exit_container(m) >= 0);
        }
        w->signals += seen;
        return 0;
}

static double now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A VMM mapping granule by granule changes Mappings and MappedBytes with every call: the bus carries
 * them at most every 10 ms per container (not one PropertiesChanged per call), and the values a
 * subscriber ends with are the container's. */
static void test_counter_changes_throttled(void **state) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int ram = test_memfd(8 * MiB);
        CounterWatch w = {};
        const unsigned N = 200;
        double start, elapsed;

        path = test_create_container(bus, "vm-counters");
        w.path = path;
        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id);
        assert_true(sd_bus_match_signal(bus, &slot, BUS_NAME, path, "org.freedesktop.DBus.Properties",
                                        "PropertiesChanged", on_counters, &w) >= 0);
        start = now_ms();
        for (unsigned i = 0; i < N; i++) {
                test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, (uint64_t) 0, (uint64_t) 4096,
                             (uint64_t) 0x100000, (uint32_t) 3);
                test_call_ok(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", (uint64_t) 0x100000, (uint64_t) 4096);
        }
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, (uint64_t) 4096, (uint64_t) 8192,
                     (uint64_t) 0x200000, (uint32_t) 3);
        elapsed = now_ms() - start;
        /* The held counters follow within the window: wait for them. */
        for (double until = now_ms() + 2000; now_ms() < until && !(w.mappings == 1 && w.mapped_bytes == 8192);)
                if (sd_bus_process(bus, NULL) == 0)
                        (void) sd_bus_wait(bus, 20000);
        assert_int_equal(w.mappings, 1);
        assert_int_equal(w.mapped_bytes, 8192);
        /* One signal per call would be 2N+1. */
        if (w.signals > elapsed / 10 + 3)
                fail_msg("%u PropertiesChanged with Mappings for %u calls in %.0f ms", w.signals, 2 * N + 1, elapsed);
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
}

static void test_two_groups(void **state) {
        _cleanup_free_ char *path = test_create_container(bus, "vm-two-groups");
        _cleanup_close_ int ram = test_memfd(4 * MiB);
        uint32_t gs[8];

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[1]->id);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, 16 * MiB, UINT32_C(3));
        /* A second group joins the same address space and shares the mapping. */
        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id);
        assert_int_equal(test_get_au(bus, path, CONTAINER_IFACE, "Groups", gs, 8), 2);
        assert_true(gs[0] < gs[1]);
        assert_int_equal(inhibitors(), 2);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 1);

        test_call_ok(bus, path, CONTAINER_IFACE, "DetachGroup", NULL, "u", viable[1]->id);
        assert_int_equal(inhibitors(), 1);
        assert_true(test_get_bool(bus, path, CONTAINER_IFACE, "BalloonInhibited"));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 1);

        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        assert_int_equal(inhibitors(), 0);
        assert_false(test_get_bool(bus, ROOT_PATH, MANAGER_IFACE, "BalloonInhibited"));
}

/* Close() with a device fd still open: nothing stays mapped, and the group stays busy until the VMM
 * closes the fd, as the kernel keeps it. */
static void test_close_with_device_open(void **state) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *a = test_create_container(bus, "vm-a"), *b = NULL;
        _cleanup_close_ int ram = test_memfd(2 * MiB), device = -EBADF;
        int fd;

        test_call_ok(bus, a, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id);
        test_call_ok(bus, a, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 2 * MiB, 2 * MiB, UINT32_C(3));
        test_call_ok(bus, a, CONTAINER_IFACE, "OpenDevice", &reply, "s", viable[0]->device);
        assert_true(sd_bus_message_read(reply, "h", &fd) >= 0);
        device = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        reply = sd_bus_message_unref(reply); /* the message holds a copy of the fd */
        test_call_ok(bus, a, CONTAINER_IFACE, "Close", NULL, "");
        assert_int_equal(inhibitors(), 0);

        b = test_create_container(bus, "vm-b");
        expect_error(test_call(bus, b, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id), ERR("Busy"),
                     "AttachGroup while a closed container's device fd is open");
        device = safe_close(device);
        test_call_ok(bus, b, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id);
        test_call_ok(bus, b, CONTAINER_IFACE, "Close", NULL, "");
}

typedef enum Call { CREATE, ATTACH, DETACH, OPEN, MAP, UNMAP } Call;

typedef struct BadInput {
        const char *what;
        Call call;
        const char *error;
        uint32_t u;            /* group, flags */
        const char *s;         /* device, option name */
        int fd_kind;           /* MAP: 0 memfd, 1 pipe, 2 socket, 3 dir, 4 O_PATH, 5 read-only memfd, 6 /dev/null, 7 closed */
        uint64_t offset, size, iova;
} BadInput;

static int bad_fd(int kind, int memfd, int *extra) {
        char proc[64];
        int p[2];

        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", memfd);
        switch (kind) {
        case 0: return fcntl(memfd, F_DUPFD_CLOEXEC, 3);
        case 1: assert_int_equal(pipe2(p, O_CLOEXEC), 0); *extra = p[1]; return p[0];
        case 2: assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p), 0); *extra = p[1]; return p[0];
        case 3: return open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        case 4: return open(proc, O_PATH | O_CLOEXEC);
        case 5: return open(proc, O_RDONLY | O_CLOEXEC);
        case 6: return open("/dev/null", O_RDWR | O_CLOEXEC);
        default: abort();
        }
}

static void test_bad_input(void **state) {
        _cleanup_free_ char *path = test_create_container(bus, "vm-bad-input");
        _cleanup_free_ char *other = test_create_container(bus, "vm-other");
        _cleanup_free_ char *empty = test_create_container(bus, "vm-empty");
        _cleanup_close_ int ram = test_memfd(16 * MiB);
        char nonviable_device[64] = "0000:ff:1f.7";
        uint32_t nonviable_id = 0xfffffff0;
        uint32_t gs[8];

        if (not_viable) {
                nonviable_id = not_viable->id;
                snprintf(nonviable_device, sizeof(nonviable_device), "%s", not_viable->device);
        }

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id);
        test_call_ok(bus, other, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[1]->id);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, 2 * MiB, 2 * MiB, 2 * MiB, UINT32_C(3));

        const BadInput table[] = {
                { "unknown option",               CREATE, INVALID_ARGS, .s = "Color" },
                { "Label of the wrong type",      CREATE, INVALID_ARGS, .s = "Label" },
                { "unknown group",                ATTACH, ERR("NoSuchGroup"), .u = 99999 },
                { "group already attached here",  ATTACH, ERR("Busy"), .u = viable[0]->id },
                { "group in another container",   ATTACH, ERR("Busy"), .u = viable[1]->id },
                { "detach unknown group",         DETACH, ERR("NoSuchGroup"), .u = 99999 },
                { "detach group of another",      DETACH, ERR("NoSuchGroup"), .u = viable[1]->id },
                { "detach last group, mapped",    DETACH, ERR("Busy"), .u = viable[0]->id },
                { "unknown device",               OPEN, ERR("NoSuchDevice"), .s = "0000:ee:00.0" },
                { "device of another's group",    OPEN, ERR("NoSuchDevice"), .s = viable[1]->device },
                { "empty device name",            OPEN, INVALID_ARGS, .s = "" },
                { "device name with a slash",     OPEN, INVALID_ARGS, .s = "../../vfio" },
                { "flags 0",                      MAP, INVALID_ARGS, .u = 0, .offset = 0, .size = 4096, .iova = 32 * MiB },
                { "unknown flag bit",             MAP, INVALID_ARGS, .u = 7, .offset = 0, .size = 4096, .iova = 32 * MiB },
                { "size 0",                       MAP, INVALID_ARGS, .u = 3, .offset = 0, .size = 0, .iova = 32 * MiB },
                { "unaligned offset",             MAP, ERR("Unaligned"), .u = 3, .offset = 0x100, .size = 4096, .iova = 32 * MiB },
                { "unaligned size",               MAP, ERR("Unaligned"), .u = 3, .offset = 0, .size = 4097, .iova = 32 * MiB },
                { "unaligned iova",               MAP, ERR("Unaligned"), .u = 3, .offset = 0, .size = 4096, .iova = 32 * MiB + 0x800 },
                { "beyond the end of the file",   MAP, ERR("OutOfRange"), .u = 3, .offset = 12 * MiB, .size = 8 * MiB, .iova = 32 * MiB },
                { "offset+size overflows",        MAP, ERR("OutOfRange"), .u = 3, .offset = UINT64_MAX - 4095, .size = 8192, .iova = 32 * MiB },
                { "iova in the MSI window",       MAP, ERR("OutOfRange"), .u = 3, .offset = 0, .size = 4096, .iova = 0xfee00000 },
                { "iova above the IOMMU's reach", MAP, ERR("OutOfRange"), .u = 3, .offset = 0, .size = 4096, .iova = UINT64_MAX - 4095 },
                { "iova range wraps",             MAP, ERR("OutOfRange"), .u = 3, .offset = 0, .size = 8192, .iova = UINT64_MAX - 4095 },
                { "overlaps a mapping",           MAP, ERR("Overlap"), .u = 3, .offset = 0, .size = 4 * MiB, .iova = 1 * MiB },
                { "a pipe",                       MAP, ERR("BadMemory"), .fd_kind = 1, .u = 1, .size = 4096, .iova = 32 * MiB },
                { "a socket",                     MAP, ERR("BadMemory"), .fd_kind = 2, .u = 1, .size = 4096, .iova = 32 * MiB },
                { "a directory",                  MAP, ERR("BadMemory"), .fd_kind = 3, .u = 1, .size = 4096, .iova = 32 * MiB },
                { "an O_PATH fd",                 MAP, ERR("BadMemory"), .fd_kind = 4, .u = 1, .size = 4096, .iova = 32 * MiB },
                { "read-only fd, device writes",  MAP, ERR("BadMemory"), .fd_kind = 5, .u = 2, .size = 4096, .iova = 32 * MiB },
                { "a character device",           MAP, ERR("BadMemory"), .fd_kind = 6, .u = 1, .size = 4096, .iova = 32 * MiB },
                { "unmap size 0",                 UNMAP, INVALID_ARGS, .iova = 2 * MiB, .size = 0 },
                { "unmap cuts the start",         UNMAP, ERR("WouldSplit"), .iova = 3 * MiB, .size = 4 * MiB },
                { "unmap cuts the end",           UNMAP, ERR("WouldSplit"), .iova = 1 * MiB, .size = 2 * MiB },
                { "unmap inside a mapping",       UNMAP, ERR("WouldSplit"), .iova = 2 * MiB + 4096, .size = 4096 },
                { "unmap where nothing is",       UNMAP, ERR("NotMapped"), .iova = 64 * MiB, .size = 2 * MiB },
                { "unmap range wraps",            UNMAP, ERR("OutOfRange"), .iova = UINT64_MAX - 4095, .size = 8192 },
                { "attach a non-viable group",    ATTACH, ERR("NotViable"), .u = 0 /* filled below */ },
                { "open a non-viable device",     OPEN, ERR("NoSuchDevice"), .s = nonviable_device },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                const BadInput *t = &table[i];
                const char *got = NULL;
                _cleanup_close_ int fd = -EBADF, extra = -EBADF;

                if (t->call == ATTACH && strcmp(t->error, ERR("NotViable")) == 0 && !not_viable)
                        continue;

                switch (t->call) {
                case CREATE:
                        if (strcmp(t->s, "Label") == 0)
                                got = test_call(bus, ROOT_PATH, MANAGER_IFACE, "CreateContainer", NULL, "a{sv}", 1, "Label", "u", 7);
                        else
                                got = test_call(bus, ROOT_PATH, MANAGER_IFACE, "CreateContainer", NULL, "a{sv}", 1, t->s, "s", "x");
                        break;
                case ATTACH:
                        got = test_call(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u",
                                        strcmp(t->error, ERR("NotViable")) == 0 ? nonviable_id : t->u);
                        break;
                case DETACH:
                        got = test_call(bus, path, CONTAINER_IFACE, "DetachGroup", NULL, "u", t->u);
                        break;
                case OPEN:
                        got = test_call(bus, path, CONTAINER_IFACE, "OpenDevice", NULL, "s", t->s);
                        break;
                case MAP:
                        fd = bad_fd(t->fd_kind, ram, &extra);
                        assert_true(fd >= 0);
                        got = test_call(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", fd, t->offset, t->size, t->iova, t->u);
                        break;
                case UNMAP:
                        got = test_call(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", t->iova, t->size);
                        break;
                }
                expect_error(got, t->error, t->what);

                /* Nothing changed, and the daemon is alive. */
                assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 1);
                assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 2 * MiB);
                assert_int_equal(test_get_au(bus, path, CONTAINER_IFACE, "Groups", gs, 8), 1);
                assert_int_equal(gs[0], viable[0]->id);
                assert_int_equal(inhibitors(), 2);
                test_call_ok(bus, ROOT_PATH, "org.freedesktop.DBus.Peer", "Ping", NULL, "");
        }

        /* Map before any group. */
        expect_error(test_call(bus, empty, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4096ULL, UINT64_C(0),
                               UINT32_C(3)), ERR("NoGroups"), "Map without a group");

        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        test_call_ok(bus, other, CONTAINER_IFACE, "Close", NULL, "");
        test_call_ok(bus, empty, CONTAINER_IFACE, "Close", NULL, "");
        assert_int_equal(inhibitors(), 0);
}

/* An unprivileged process that is not the owner gets AccessDenied on every method; without polkit
 * on the bus it cannot attach groups to its own container either (fail closed). Root acts as
 * administrator. */
static void test_ownership(void **state) {
        _cleanup_free_ char *path = test_create_container(bus, "vm-owned");
        _cleanup_close_ int ram = test_memfd(2 * MiB);
        int status;
        pid_t pid;

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 2 * MiB, 2 * MiB, UINT32_C(3));

        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int failures = 0;
                if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
                        _exit(100);
                sd_bus *b = NULL;
                if (sd_bus_open_system(&b) < 0)
                        _exit(101);
#define CHECK(call, want)                                                                   \
                do {                                                                        \
                        const char *_g = call, *_w = want;                                  \
                        if ((!_g != !_w) || (_g && strcmp(_g, _w) != 0)) {                  \
                                fprintf(stderr, "%s: expected %s, got %s\n", #call, _w ?: "success", _g ?: "success"); \
                                failures++;                                                 \
                        }                                                                   \
                } while (0)
                CHECK(test_call(b, path, CONTAINER_IFACE, "Unmap", NULL, "tt", 2 * MiB, 2 * MiB), ACCESS_DENIED);
                CHECK(test_call(b, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4096ULL, 8 * MiB, UINT32_C(3)), ACCESS_DENIED);
                CHECK(test_call(b, path, CONTAINER_IFACE, "DetachGroup", NULL, "u", viable[0]->id), ACCESS_DENIED);
                CHECK(test_call(b, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[1]->id), ACCESS_DENIED);
                CHECK(test_call(b, path, CONTAINER_IFACE, "OpenDevice", NULL, "s", viable[0]->device), ACCESS_DENIED);
                CHECK(test_call(b, path, CONTAINER_IFACE, "Close", NULL, ""), ACCESS_DENIED);

                /* Its own container: fine, but attaching needs polkit, which is not there. */
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                const char *own;
                if (test_call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0) ||
                    sd_bus_message_read(reply, "o", &own) < 0)
                        _exit(102);
                CHECK(test_call(b, own, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[1]->id), ACCESS_DENIED);
                CHECK(test_call(b, own, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4096ULL, 0ULL, UINT32_C(3)), ERR("NoGroups"));
                if (test_get_u32(b, own, CONTAINER_IFACE, "UID") != 65534)
                        failures++;
                CHECK(test_call(b, own, CONTAINER_IFACE, "Close", NULL, ""), NULL);
#undef CHECK
                _exit(failures);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 1);

        /* A second root connection is not the owner, but root may manage any container. */
        sd_bus *admin = test_bus_open();
        expect_error(test_call(admin, path, CONTAINER_IFACE, "Unmap", NULL, "tt", 64 * MiB, 4096ULL), ERR("NotMapped"),
                     "root non-owner Unmap");
        test_call_ok(admin, path, CONTAINER_IFACE, "Close", NULL, "");
        sd_bus_flush_close_unref(admin);
        assert_int_equal(inhibitors(), 0);
}

/* The owner dies with everything attached, mapped and open: nothing is left. */
static void test_kill9_teardown(void **state) {
        char path[256] = {};
        int p[2], status;
        pid_t pid;

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *b = NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                const char *c;
                int ram = test_memfd(64 * MiB), fd;

                close(p[0]);
                if (sd_bus_open_system(&b) < 0)
                        _exit(1);
                if (test_call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 1, "Label", "s", "doomed") ||
                    sd_bus_message_read(reply, "o", &c) < 0 || !(c = strdup(c)))
                        _exit(2);
                if (test_call(b, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id) ||
                    test_call(b, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[1]->id) ||
                    test_call(b, c, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 64 * MiB, 64 * MiB, UINT32_C(3)))
                        _exit(3);
                reply = sd_bus_message_unref(reply);
                if (test_call(b, c, CONTAINER_IFACE, "OpenDevice", &reply, "s", viable[0]->device) ||
                    sd_bus_message_read(reply, "h", &fd) < 0 || fcntl(fd, F_DUPFD, 3) < 0)
                        _exit(4);
                if (write(p[1], c, strlen(c)) < 0)
                        _exit(5);
                close(p[1]);
                for (;;)
                        pause();
        }
        close(p[1]);
        assert_true(read(p[0], path, sizeof(path) - 1) > 0);
        close(p[0]);

        assert_true(test_object_exists(bus, path));
        assert_int_equal(inhibitors(), 2);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 64 * MiB);

        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);

        for (int i = 0; i < 100 && test_object_exists(bus, path); i++)
                usleep(50000);
        assert_false(test_object_exists(bus, path));
        assert_int_equal(inhibitors(), 0);
        for (size_t i = 0; i < 2; i++) {
                char gpath[128];
                snprintf(gpath, sizeof(gpath), ROOT_PATH "/group/%" PRIu32, viable[i]->id);
                _cleanup_free_ char *c = test_get_string(bus, gpath, GROUP_IFACE, "Container", 'o');
                assert_string_equal(c, "/");
        }

        /* Both groups can be used again right away. */
        _cleanup_free_ char *again = test_create_container(bus, "reborn");
        test_call_ok(bus, again, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[0]->id);
        test_call_ok(bus, again, CONTAINER_IFACE, "AttachGroup", NULL, "u", viable[1]->id);
        test_call_ok(bus, again, CONTAINER_IFACE, "Close", NULL, "");
}

/* dbus-daemon allows a connection 512 match rules; tracking every container's owner with its own
 * match once cost the daemon its bus connection (and every VM) at the 512th container. */
static void test_many_containers_one_owner(void **state) {
        char *paths[600];

        for (size_t i = 0; i < ELEMENTSOF(paths); i++)
                paths[i] = test_create_container(bus, "many");
        test_call_ok(bus, ROOT_PATH, "org.freedesktop.DBus.Peer", "Ping", NULL, "");
        for (size_t i = 0; i < ELEMENTSOF(paths); i++) {
                test_call_ok(bus, paths[i], CONTAINER_IFACE, "Close", NULL, "");
                free(paths[i]);
        }
        test_call_ok(bus, ROOT_PATH, "org.freedesktop.DBus.Peer", "Ping", NULL, "");
}

int main(int argc, char *argv[]) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_manager),
                cmocka_unit_test(test_groups),
                cmocka_unit_test(test_container_lifecycle),
                cmocka_unit_test(test_attach_map_signals),
                cmocka_unit_test(test_counter_changes_throttled),
                cmocka_unit_test(test_two_groups),
                cmocka_unit_test(test_close_with_device_open),
                cmocka_unit_test(test_bad_input),
                cmocka_unit_test(test_ownership),
                cmocka_unit_test(test_kill9_teardown),
                cmocka_unit_test(test_many_containers_one_owner),
        };

        if (argc > 1)
                cmocka_set_test_filter(argv[1]);
        return cmocka_run_group_tests_name("broker contract", tests, setup, teardown);
}
