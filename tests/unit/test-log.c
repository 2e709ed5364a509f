/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* log_event() away from journald: one stderr line, the message then its fields, unset fields left out;
 * and the authorization-denied helper takes group and devices from polkit's details. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "log.h"
#include "message-ids.h"

/* Runs f with stderr going to a memfd; returns what it wrote (malloc'd). */
static char *capture_stderr(void (*f)(void)) {
        int fd = memfd_create("stderr", MFD_CLOEXEC), saved = dup(STDERR_FILENO);
        char *text = calloc(1, 4096);

        assert_true(fd >= 0 && saved >= 0 && text);
        fflush(stderr);
        assert_true(dup2(fd, STDERR_FILENO) >= 0);
        f();
        fflush(stderr);
        assert_true(dup2(saved, STDERR_FILENO) >= 0);
        assert_true(pread(fd, text, 4095, 0) >= 0);
        close(fd);
        close(saved);
        return text;
}

static void emit_attached(void) {
        uid_t uid = 1000;
        unsigned group = 7;

        log_event(&(LogEvent) { LOG_MESSAGE_GROUP_ATTACHED, .container = 3, .label = "vm1", .uid = &uid,
                                .group = &group }, "Container %u: attached VFIO group %u.", 3, group);
}

static void test_event_on_stderr(void **state) {
        char *text;

        unsetenv("JOURNAL_STREAM");
        text = capture_stderr(emit_attached);
        assert_string_equal(text, "Container 3: attached VFIO group 7. [MESSAGE_ID=" LOG_MESSAGE_GROUP_ATTACHED
                                  " CONTAINER_ID=3 CONTAINER_LABEL=vm1 USER_ID=1000 VFIO_GROUP=7]\n");
        free(text);
}

static void emit_denied(void) {
        static const char * const details[] = { "group", "12", "devices", "0000:01:00.0,0000:01:00.1", NULL };

        log_event_denied("org.vfiobroker.broker1.attach-group", 1001, details, "Not authorized by polkit.");
}

static void test_denied(void **state) {
        char *text;

        unsetenv("JOURNAL_STREAM");
        text = capture_stderr(emit_denied);
        assert_string_equal(text, "Denied org.vfiobroker.broker1.attach-group to uid 1001 for VFIO group 12, devices "
                                  "0000:01:00.0,0000:01:00.1: Not authorized by polkit. [MESSAGE_ID="
                                  LOG_MESSAGE_AUTHORIZATION_DENIED " USER_ID=1001 VFIO_GROUP=12 "
                                  "DEVICE=0000:01:00.0,0000:01:00.1 POLKIT_ACTION=org.vfiobroker.broker1.attach-group "
                                  "REASON=Not authorized by polkit.]\n");
        free(text);
}

static void emit_quiet(void) {
        log_set_max_level(4); /* warnings and worse: info events are dropped */
        emit_attached();
        log_set_max_level(6);
}

static void test_level(void **state) {
        char *text = capture_stderr(emit_quiet);

        assert_string_equal(text, "");
        free(text);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_event_on_stderr),
                cmocka_unit_test(test_denied),
                cmocka_unit_test(test_level),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
