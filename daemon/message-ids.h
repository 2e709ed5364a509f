/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The journal MESSAGE_IDs of vfio-brokerd's events, made with `systemd-id128 new`. They never change
 * once released: administrators and monitoring match on them, e.g.
 *   journalctl MESSAGE_ID=c36ad5e7b9e34d7f9d0b07c5bb3d2f41
 * vfio-brokerd(8), LOGGING, lists them with their fields. */

#define LOG_MESSAGE_CONTAINER_CREATED     "74955c1bc5dd4c6d9bc07e04ebe0c190"
#define LOG_MESSAGE_CONTAINER_CLOSED      "3ab40f824bd7420f8739d3b229f5de86"
#define LOG_MESSAGE_GROUP_ATTACHED        "17da396858d34cffb34f48416a637b62"
#define LOG_MESSAGE_GROUP_DETACHED        "143885bc8ed045908e5d4a229e545cab"
#define LOG_MESSAGE_AUTHORIZATION_DENIED  "a1b2a145e1db4c878ab8402c780e61b3"
#define LOG_MESSAGE_RESTORE_DONE          "9746c766acef4a62a62fc9c6c7d1d30f"
#define LOG_MESSAGE_VFIO_USER_CONNECTED   "4d47b772c4f94d20866f1b34e44707d5"
#define LOG_MESSAGE_VFIO_USER_DISCONNECTED "7831a8ab1b59478089dc41d08f2e6f1b"
#define LOG_MESSAGE_CONFIG_RELOADED       "66382263514c4644997e3037326db5cd"
