/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libFuzzer target: a state log or state file left by a previous instance, whatever it says, never crashes the
 * daemon and never leaves anything behind: without the fds it names (none are given here) and without
 * a living owner, every container it describes is refused or torn down again. */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend-sim.h"
#include "broker.h"
#include "group.h"
#include "state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        BrokerConfig *config = NULL;
        Backend *backend = NULL;
        Broker *broker = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        char *text = malloc(size + 1);

        if (!text)
                return 0;
        memcpy(text, data, size);
        text[size] = 0;
        if (broker_config_new_default(&config) < 0 || backend_sim_new(config, &backend, NULL) < 0 ||
            broker_new(NULL, backend, config, &broker) < 0 || broker_refresh_groups(broker) < 0)
                abort();

        /* A state log (daemon/state-log.h), or the JSON state file of an older daemon. */
        int r = size >= 8 && memcmp(data, "vfbrlog1", 8) == 0 ? state_restore_log(broker, data, size, &e) :
                                                                 state_restore_text(broker, text, &e);
        if (r < 0 && (e.code == BROKER_ERROR_NONE || e.message[0] == 0) && r != -ENOMEM)
                abort();
        /* No bus, so no owner is alive: nothing may remain. */
        if (broker->containers || broker->balloon_inhibitors != 0 || backend_sim_pinned_bytes(broker->backend) != 0)
                abort();
        for (size_t i = 0; i < broker->n_groups; i++)
                if (broker->groups[i]->container)
                        abort();
        broker_free(broker);
        free(text);
        return 0;
}
