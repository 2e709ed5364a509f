/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

sd_bus *test_bus_open(void) {
        sd_bus *bus = NULL;
        int r = sd_bus_open_system(&bus);
        if (r < 0)
                fail_msg("cannot connect to the bus: %s", strerror(-r));
        return bus;
}

const char *test_call(sd_bus *bus, const char *path, const char *interface, const char *member,
                      sd_bus_message **reply, const char *types, ...) {
        static char name[256];
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, BUS_NAME, path, interface, member);
        if (r < 0)
                fail_msg("Cannot create a %s call: %s", member, strerror(-r));
        if (types && *types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
                if (r < 0)
                        fail_msg("Cannot build %s(%s): %s", member, types, strerror(-r));
        }
        r = sd_bus_call(bus, m, 10 * 1000000ULL, &error, reply);
        if (r >= 0)
                return NULL;
        snprintf(name, sizeof(name), "%s", error.name ?: "(local error)");
        /* Every error must say something a VMM author can act on. */
        if (error.name && strncmp(error.name, "org.vfiobroker", 14) == 0)
                assert_true(error.message && strlen(error.message) > 15);
        sd_bus_error_free(&error);
        return name;
}

char *test_create_container(sd_bus *bus, const char *label) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path;

        test_call_ok(bus, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 1, "Label", "s", label);
        assert_true(sd_bus_message_read(reply, "o", &path) >= 0);
        return strdup(path);
}

static void get_property(sd_bus *bus, const char *path, const char *iface, const char *prop, const char *type,
                         sd_bus_message **reply) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property(bus, BUS_NAME, path, iface, prop, &error, reply, type);
        if (r < 0)
                fail_msg("Get %s.%s on %s: %s", iface, prop, path, error.message ?: strerror(-r));
}

uint32_t test_get_u32(sd_bus *bus, const char *path, const char *iface, const char *prop) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        uint32_t v;
        get_property(bus, path, iface, prop, "u", &m);
        assert_true(sd_bus_message_read(m, "u", &v) >= 0);
        return v;
}

uint64_t test_get_u64(sd_bus *bus, const char *path, const char *iface, const char *prop) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        uint64_t v;
        get_property(bus, path, iface, prop, "t", &m);
        assert_true(sd_bus_message_read(m, "t", &v) >= 0);
        return v;
}

bool test_get_bool(sd_bus *bus, const char *path, const char *iface, const char *prop) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int v;
        get_property(bus, path, iface, prop, "b", &m);
        assert_true(sd_bus_message_read(m, "b", &v) >= 0);
        return v;
}

char *test_get_string(sd_bus *bus, const char *path, const char *iface, const char *prop, char type) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        char t[2] = { type, 0 };
        const char *v;
        get_property(bus, path, iface, prop, t, &m);
        assert_true(sd_bus_message_read_basic(m, type, &v) >= 0);
        return strdup(v);
}

size_t test_get_au(sd_bus *bus, const char *path, const char *iface, const char *prop, uint32_t *out, size_t max) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        const void *p;
        size_t n;
        get_property(bus, path, iface, prop, "au", &m);
        assert_true(sd_bus_message_read_array(m, 'u', &p, &n) >= 0);
        n /= sizeof(uint32_t);
        assert_true(n <= max);
        memcpy(out, p, n * sizeof(uint32_t));
        return n;
}

bool test_object_exists(sd_bus *bus, const char *path) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *p;
        bool found = false;

        test_call_ok(bus, ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", &reply, "");
        assert_true(sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}") >= 0);
        while (sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}") > 0) {
                assert_true(sd_bus_message_read(reply, "o", &p) >= 0);
                if (strcmp(p, path) == 0)
                        found = true;
                assert_true(sd_bus_message_skip(reply, "a{sa{sv}}") >= 0);
                assert_true(sd_bus_message_exit_container(reply) >= 0);
        }
        return found;
}

int test_memfd(uint64_t size) {
        int fd = memfd_create("test-ram", MFD_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        return fd;
}

size_t test_list_groups(sd_bus *bus, TestGroup *out, size_t max) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        size_t n = 0;
        const char *path;

        test_call_ok(bus, ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", &reply, "");
        assert_true(sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}") >= 0);
        while (sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}") > 0) {
                assert_true(sd_bus_message_read(reply, "o", &path) >= 0);
                assert_true(sd_bus_message_skip(reply, "a{sa{sv}}") >= 0);
                assert_true(sd_bus_message_exit_container(reply) >= 0);
                if (strncmp(path, ROOT_PATH "/group/", strlen(ROOT_PATH "/group/")) != 0 || n >= max)
                        continue;

                TestGroup *g = &out[n++];
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                _cleanup_free_ char *container = NULL;
                const char *dev;
                g->id = test_get_u32(bus, path, GROUP_IFACE, "Id");
                g->viable = test_get_bool(bus, path, GROUP_IFACE, "Viable");
                container = test_get_string(bus, path, GROUP_IFACE, "Container", 'o');
                g->free = strcmp(container, "/") == 0;
                get_property(bus, path, GROUP_IFACE, "Devices", "as", &m);
                assert_true(sd_bus_message_enter_container(m, 'a', "s") >= 0);
                assert_true(sd_bus_message_read(m, "s", &dev) > 0);
                snprintf(g->device, sizeof(g->device), "%s", dev);
        }
        return n;
}

static int on_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        ChangeLog *log = userdata;
        const char *iface, *name;

        if (sd_bus_message_read(m, "s", &iface) < 0)
                return 0;
        if (sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return 0;
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                if (sd_bus_message_read(m, "s", &name) < 0)
                        return 0;
                if (log->n < ELEMENTSOF(log->entries))
                        snprintf(log->entries[log->n++], sizeof(log->entries[0]), "%s %s.%s",
                                 sd_bus_message_get_path(m), iface, name);
                (void) sd_bus_message_skip(m, "v");
                (void) sd_bus_message_exit_container(m);
        }
        return 0;
}

int test_watch_changes(sd_bus *bus, ChangeLog *log, sd_bus_slot **slot) {
        log->n = 0;
        return sd_bus_match_signal(bus, slot, BUS_NAME, NULL, "org.freedesktop.DBus.Properties",
                                   "PropertiesChanged", on_changed, log);
}

bool test_wait_change(sd_bus *bus, ChangeLog *log, const char *path, const char *iface, const char *prop) {
        char want[160];
        struct timespec start, now;

        snprintf(want, sizeof(want), "%s %s.%s", path, iface, prop);
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (;;) {
                for (size_t i = 0; i < log->n; i++)
                        if (strcmp(log->entries[i], want) == 0)
                                return true;
                clock_gettime(CLOCK_MONOTONIC, &now);
                if (now.tv_sec - start.tv_sec > 5)
                        return false;
                if (sd_bus_process(bus, NULL) == 0)
                        (void) sd_bus_wait(bus, 100000);
        }
}

const char *test_harness(const char *cmd) {
        static char answer[4096];
        char path[512];
        const char *dir = getenv("VFIO_BROKER_HARNESS");
        FILE *f;

        assert_non_null(dir);
        snprintf(path, sizeof(path), "%s/cmd", dir);
        f = fopen(path, "we");
        assert_non_null(f);
        fprintf(f, "%s\n", cmd);
        fclose(f);
        snprintf(path, sizeof(path), "%s/ack", dir);
        f = fopen(path, "re");
        assert_non_null(f);
        assert_non_null(fgets(answer, sizeof(answer), f));
        fclose(f);
        answer[strcspn(answer, "\n")] = 0;
        return answer;
}
