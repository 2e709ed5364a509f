/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Shared by state.c (the store) and state-restore.c. */

#include <stdbool.h>
#include <stdint.h>

#include "broker.h"

/* <state dir>/container-<id>.json */
char *state_file(Broker *b, uint64_t id);

bool strv_contains(char **l, const char *s);
int strv_push(char ***l, const char *s);
