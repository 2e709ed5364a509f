/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <json-c/json.h>

#include "error.h"

/* Parses text as one JSON value, strictly (see json-strict.c); InvalidArgs with line and column on
 * anything else. */
int json_parse_strict(const char *text, json_object **ret, BrokerError *e);
