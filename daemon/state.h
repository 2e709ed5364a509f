/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Restart without losing a VM. Every container's kernel objects (container and group fds, the sim's
 * device fds) live in systemd's fd store under "c<id>-<name>", the VMMs' memory once per open file under
 * "m<n>" (shared by every region and container that maps it), and the state of all of them in the
 * state log, a memfd in the store too (state-log.h), appended to before the reply to every change.
 * A new instance takes the fds back (sd_listen_fds_with_names()), rebuilds every container under the same object
 * path, maps the memory again and points the kernel at the new addresses (VFIO_DMA_MAP_FLAG_VADDR),
 * re-tracks owners by unique name and closes containers whose owner left meanwhile. What cannot be
 * restored is torn down: nothing stays pinned for a container nobody can reach. */

#include "broker.h"

/* Enabled when the daemon runs under a service manager that keeps fds ($NOTIFY_SOCKET). fdstore_max:
 * the unit's FileDescriptorStoreMax= (0: unknown); a Map that needs an fd more is refused. */
int state_setup(Broker *b, const char *state_dir, unsigned fdstore_max);

/* At the end of every request that changed c: the log records it appended count from now on (head:
 * c's small state changed too, and is written again). A no-op when persistence is off. */
int state_save_container(Container *c, bool head);
/* c goes away for good: its fds leave the store, its file is deleted. */
void state_forget_container(Container *c);

/* At start, after the bus objects exist and before the name is requested. */
int state_restore(Broker *b);

/* One container's state as text (the state files of older daemons), or a state log's bytes, without
 * stored fds: for the fuzzer. */
int state_restore_text(Broker *b, const char *text, BrokerError *e);
int state_restore_log(Broker *b, const void *data, size_t size, BrokerError *e);

/* Orderly exit that leaves every container to the next instance: the kernel forgets the daemon's
 * addresses (DMA goes on), state is saved. Returns true if containers were handed over. */
bool state_hand_over(Broker *b);
