/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libFuzzer target: the configuration parser never crashes, leaks or accepts what it then cannot
 * hold, whatever the file says. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        BrokerConfig *c = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        char *text = malloc(size + 1);
        int r;

        if (!text)
                return 0;
        memcpy(text, data, size);
        text[size] = 0;

        r = broker_config_parse(text, &c, &e);
        if (r < 0) {
                /* A refusal always says why. */
                if (e.code != BROKER_ERROR_INVALID_ARGS || e.message[0] == 0)
                        abort();
                if (c)
                        abort();
        } else {
                /* What was accepted is consistent. */
                for (size_t i = 0; i < c->sim.n_groups; i++)
                        if (!c->sim.groups[i].devices || !c->sim.groups[i].devices[0])
                                abort();
                for (size_t i = 1; i < c->sim.n_iova_ranges; i++)
                        if (c->sim.iova_ranges[i].first <= c->sim.iova_ranges[i - 1].last)
                                abort();
                if (c->sim.page_sizes == 0 || c->sim.dma_entry_limit == 0)
                        abort();
                broker_config_free(c);
        }
        free(text);
        return 0;
}
