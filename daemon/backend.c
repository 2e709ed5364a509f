/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdlib.h>

#include "backend.h"

void backend_group_info_free_many(BackendGroupInfo *infos, size_t n) {
        if (!infos)
                return;
        for (size_t i = 0; i < n; i++)
                strv_free(infos[i].devices);
        free(infos);
}

void backend_iommu_info_done(BackendIommuInfo *info) {
        if (!info)
                return;
        free(info->ranges);
        *info = (BackendIommuInfo) {};
}
