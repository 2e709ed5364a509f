/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What the files of vfio-brokerctl share: its exit codes, the --json switch, the commands and the
 * helpers their output uses. Private to the tool; not installed. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "vfio-broker/vfio-broker.h"

/* Exit codes scripts can rely on (vfio-brokerctl(1)). */
enum {
        EXIT_OK = 0,
        EXIT_ERROR = 1,         /* the broker refused or failed the request */
        EXIT_USAGE = 2,
        EXIT_UNAVAILABLE = 3,   /* no bus, or no broker on it */
        EXIT_NOT_FOUND = 4,     /* no such container */
        EXIT_DENIED = 5,        /* not authorized */
};

/* -j/--json, set by main() before any command runs. */
extern bool arg_json;

/* vfio-brokerctl-output.c */
int exit_for(vfio_broker *b, int r, const char *what);
void print_json(json_object *o);
json_object *json_u64(uint64_t v);

/* vfio-brokerctl.c */
void help(FILE *f);

/* The commands main() dispatches to: argv[0] is the command's name, argv[1...] its words, already
 * counted. Each returns the tool's exit code. */
int cmd_status(vfio_broker *b, int argc, char **argv);          /* vfio-brokerctl-inspect.c */
int cmd_groups(vfio_broker *b, int argc, char **argv);
int cmd_list(vfio_broker *b, int argc, char **argv);
int cmd_show(vfio_broker *b, int argc, char **argv);
int cmd_close(vfio_broker *b, int argc, char **argv);
int cmd_monitor(vfio_broker *b, int argc, char **argv);         /* vfio-brokerctl-monitor.c */

/* vfio-brokerctl-run.c: run parses its own options; argv[0] is "run". */
int run_main(int argc, char **argv);
