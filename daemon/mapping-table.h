/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The set of DMA mappings of one container: non-overlapping IOVA intervals in a red-black tree
 * ordered by first address. Because intervals never overlap, ordering by start is enough for
 * O(log n) insert, point lookup and "first interval intersecting a range"; removing every interval
 * inside a range is O(k log n). A VMM can hold tens of thousands of mappings (the kernel's default
 * limit is 65535), so nothing here is linear in the table size.
 *
 * Intrusive, like c-rbtree: the caller embeds a MappingTableNode in its own structure and recovers
 * it with container_of(). The table never allocates and never frees. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>


/* 40 bytes: the colour lives in the low bit of the parent pointer (nodes are 8-aligned). With 48, a
 * Mapping of the daemon or an entry of the sim's IOMMU table would land in the next malloc size class,
 * 16 bytes more per mapping. */
typedef struct MappingTableNode {
        uintptr_t parent_red; /* parent | red */
        struct MappingTableNode *left, *right;
        uint64_t first; /* first IOVA, inclusive */
        uint64_t last;  /* last IOVA, inclusive: a mapping may end at 2^64-1 */
} MappingTableNode;

static inline MappingTableNode *mapping_table_node_parent(const MappingTableNode *n) {
        return (MappingTableNode *) (n->parent_red & ~(uintptr_t) 1);
}

static inline bool mapping_table_node_red(const MappingTableNode *n) {
        return n->parent_red & 1;
}

typedef struct MappingTable {
        MappingTableNode *root;
        size_t n_nodes;
        uint64_t n_bytes; /* sum of (last - first + 1); saturates at UINT64_MAX */
} MappingTable;

#define MAPPING_TABLE_INIT ((MappingTable) {})

/* Sets node->first/last from iova and size (size > 0, iova + size - 1 must not overflow). */
void mapping_table_node_init(MappingTableNode *node, uint64_t iova, uint64_t size);

static inline uint64_t mapping_table_node_size(const MappingTableNode *node) {
        return node->last - node->first + 1;
}

/* Inserts node. Returns 0, or -EEXIST (and leaves the table unchanged) if it intersects an existing
 * node; then *ret_conflict (if non-NULL) points at the lowest such node. */
int mapping_table_insert(MappingTable *t, MappingTableNode *node, MappingTableNode **ret_conflict);

/* Removes a node that is in the table. */
void mapping_table_remove(MappingTable *t, MappingTableNode *node);

/* The node containing iova, or NULL. */
MappingTableNode *mapping_table_find(const MappingTable *t, uint64_t iova);

/* The node with the lowest first address that intersects [first, last], or NULL. */
MappingTableNode *mapping_table_first_intersecting(const MappingTable *t, uint64_t first, uint64_t last);

/* In-order iteration. */
MappingTableNode *mapping_table_first(const MappingTable *t);
MappingTableNode *mapping_table_last(const MappingTable *t);
MappingTableNode *mapping_table_next(const MappingTableNode *node);
MappingTableNode *mapping_table_prev(const MappingTableNode *node);

static inline size_t mapping_table_size(const MappingTable *t) {
        return t->n_nodes;
}

static inline uint64_t mapping_table_bytes(const MappingTable *t) {
        return t->n_bytes;
}

/* Iterate safely while removing the current node. */
#define MAPPING_TABLE_FOREACH_SAFE(node, next, table)                                           \
        for ((node) = mapping_table_first(table), (next) = (node) ? mapping_table_next(node) : NULL; \
             (node);                                                                            \
             (node) = (next), (next) = (node) ? mapping_table_next(node) : NULL)
