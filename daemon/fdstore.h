/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The service manager's file-descriptor store (sd_notify(3): FDSTORE=1, FDNAME=, FDPOLL=0,
 * FDSTOREREMOVE=1), over one datagram socket kept for the daemon's life: sd_pid_notify_with_fds()
 * would open and set up a socket for every message, and every Map of new memory stores an fd. */

#include <stdbool.h>

/* Connects to $NOTIFY_SOCKET; -EINVAL when it is unset or malformed. */
int fdstore_connect(int *ret_fd);

/* Stores fd under name; poll=false for fds that cannot be polled (VFIO groups). */
int fdstore_push(int notify_fd, const char *name, int fd, bool poll);
void fdstore_remove(int notify_fd, const char *name);
