/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* A red-black tree (CLRS) of non-overlapping intervals keyed by their first address. */

#include <assert.h>
#include <errno.h>

#include "mapping-table.h"

void mapping_table_node_init(MappingTableNode *node, uint64_t iova, uint64_t size) {
        assert(node);
        assert(size > 0);
        assert(iova + (size - 1) >= iova);

        *node = (MappingTableNode) {
                .first = iova,
                .last = iova + (size - 1),
        };
}

static inline MappingTableNode *parent_of(const MappingTableNode *n) {
        return mapping_table_node_parent(n);
}

static inline void set_parent(MappingTableNode *n, MappingTableNode *p) {
        n->parent_red = (uintptr_t) p | (n->parent_red & 1);
}

static inline bool is_red(const MappingTableNode *n) {
        return n && mapping_table_node_red(n);
}

static inline void set_red(MappingTableNode *n, bool red) {
        n->parent_red = (n->parent_red & ~(uintptr_t) 1) | (uintptr_t) red;
}

static void rotate_left(MappingTable *t, MappingTableNode *x) {
        MappingTableNode *y = x->right;

        x->right = y->left;
        if (y->left)
                set_parent(y->left, x);
        set_parent(y, parent_of(x));
        if (!parent_of(x))
                t->root = y;
        else if (x == parent_of(x)->left)
                parent_of(x)->left = y;
        else
                parent_of(x)->right = y;
        y->left = x;
        set_parent(x, y);
}

static void rotate_right(MappingTable *t, MappingTableNode *x) {
        MappingTableNode *y = x->left;

        x->left = y->right;
        if (y->right)
                set_parent(y->right, x);
        set_parent(y, parent_of(x));
        if (!parent_of(x))
                t->root = y;
        else if (x == parent_of(x)->right)
                parent_of(x)->right = y;
        else
                parent_of(x)->left = y;
        y->right = x;
        set_parent(x, y);
}

/* The node with the greatest first <= key, or NULL. */
static MappingTableNode *floor_node(const MappingTable *t, uint64_t key) {
        MappingTableNode *n = t->root, *best = NULL;

        while (n) {
                if (n->first <= key) {
                        best = n;
                        n = n->right;
                } else
                        n = n->left;
        }
        return best;
}

MappingTableNode *mapping_table_find(const MappingTable *t, uint64_t iova) {
        MappingTableNode *n = floor_node(t, iova);
        return n && n->last >= iova ? n : NULL;
}

/* The search path for a key passes both its floor (greatest first <= key) and its strict ceiling
 * (smallest first > key): one descent answers an intersection query, and the same descent ends
 * where an insertion links its node. Every Map asks twice (the broker's table, the sim's IOMMU). */
static MappingTableNode *descend(const MappingTable *t, uint64_t first, uint64_t last, MappingTableNode **ret_parent,
                                 MappingTableNode ***ret_link) {
        MappingTableNode *const *link = &t->root, *parent = NULL, *floor = NULL, *ceiling = NULL;

        while (*link) {
                parent = *link;
                if (parent->first <= first) {
                        floor = parent;
                        link = &parent->right;
                } else {
                        ceiling = parent;
                        link = &parent->left;
                }
        }
        if (ret_parent) {
                *ret_parent = parent;
                *ret_link = (MappingTableNode **) link;
        }
        /* Either the interval that starts at or before first reaches into the range, or the first
         * interval that starts inside it. */
        if (floor && floor->last >= first)
                return floor;
        return ceiling && ceiling->first <= last ? ceiling : NULL;
}

MappingTableNode *mapping_table_first_intersecting(const MappingTable *t, uint64_t first, uint64_t last) {
        assert(first <= last);
        return descend(t, first, last, NULL, NULL);
}

int mapping_table_insert(MappingTable *t, MappingTableNode *node, MappingTableNode **ret_conflict) {
        MappingTableNode *conflict, *parent, **link;
        uint64_t size;

        assert(t);
        assert(node);
        assert(node->first <= node->last);

        conflict = descend(t, node->first, node->last, &parent, &link);
        if (conflict) {
                if (ret_conflict)
                        *ret_conflict = conflict;
                return -EEXIST;
        }

        /* [0, 2^64-1] is 2^64 bytes: saturate rather than wrap. */
        size = node->first == 0 && node->last == UINT64_MAX ? UINT64_MAX : mapping_table_node_size(node);

        set_parent(node, parent);
        node->left = node->right = NULL;
        set_red(node, true);
        *link = node;

        /* Restore: no red node has a red child. */
        while (is_red(parent_of(node))) {
                MappingTableNode *p = parent_of(node), *g = parent_of(p), *uncle;

                if (p == g->left) {
                        uncle = g->right;
                        if (is_red(uncle)) {
                                set_red(p, false);
                                set_red(uncle, false);
                                set_red(g, true);
                                node = g;
                                continue;
                        }
                        if (node == p->right) {
                                node = p;
                                rotate_left(t, node);
                                p = parent_of(node);
                        }
                        set_red(p, false);
                        set_red(g, true);
                        rotate_right(t, g);
                } else {
                        uncle = g->left;
                        if (is_red(uncle)) {
                                set_red(p, false);
                                set_red(uncle, false);
                                set_red(g, true);
                                node = g;
                                continue;
                        }
                        if (node == p->left) {
                                node = p;
                                rotate_right(t, node);
                                p = parent_of(node);
                        }
                        set_red(p, false);
                        set_red(g, true);
                        rotate_left(t, g);
                }
        }
        set_red(t->root, false);

        t->n_nodes++;
        t->n_bytes = t->n_bytes + size < t->n_bytes ? UINT64_MAX : t->n_bytes + size;
        return 0;
}

static void transplant(MappingTable *t, MappingTableNode *u, MappingTableNode *v) {
        if (!parent_of(u))
                t->root = v;
        else if (u == parent_of(u)->left)
                parent_of(u)->left = v;
        else
                parent_of(u)->right = v;
        if (v)
                set_parent(v, parent_of(u));
}

static MappingTableNode *subtree_min(MappingTableNode *n) {
        while (n->left)
                n = n->left;
        return n;
}

static MappingTableNode *subtree_max(MappingTableNode *n) {
        while (n->right)
                n = n->right;
        return n;
}

void mapping_table_remove(MappingTable *t, MappingTableNode *z) {
        MappingTableNode *x, *x_parent, *y = z;
        bool y_was_red = is_red(y);
        uint64_t size;

        assert(t);
        assert(z);
        assert(t->n_nodes > 0);

        if (!z->left) {
                x = z->right;
                x_parent = parent_of(z);
                transplant(t, z, z->right);
        } else if (!z->right) {
                x = z->left;
                x_parent = parent_of(z);
                transplant(t, z, z->left);
        } else {
                y = subtree_min(z->right);
                y_was_red = is_red(y);
                x = y->right;
                if (parent_of(y) == z)
                        x_parent = y;
                else {
                        x_parent = parent_of(y);
                        transplant(t, y, y->right);
                        y->right = z->right;
                        set_parent(y->right, y);
                }
                transplant(t, z, y);
                y->left = z->left;
                set_parent(y->left, y);
                set_red(y, is_red(z));
        }

        /* A black node left: restore equal black heights (x may be NULL, so track its parent). */
        if (!y_was_red) {
                while (x != t->root && !is_red(x)) {
                        MappingTableNode *w;

                        if (x == x_parent->left) {
                                w = x_parent->right;
                                if (is_red(w)) {
                                        set_red(w, false);
                                        set_red(x_parent, true);
                                        rotate_left(t, x_parent);
                                        w = x_parent->right;
                                }
                                if (!is_red(w->left) && !is_red(w->right)) {
                                        set_red(w, true);
                                        x = x_parent;
                                        x_parent = parent_of(x);
                                } else {
                                        if (!is_red(w->right)) {
                                                set_red(w->left, false);
                                                set_red(w, true);
                                                rotate_right(t, w);
                                                w = x_parent->right;
                                        }
                                        set_red(w, is_red(x_parent));
                                        set_red(x_parent, false);
                                        if (w->right)
                                                set_red(w->right, false);
                                        rotate_left(t, x_parent);
                                        x = t->root;
                                        x_parent = NULL;
                                }
                        } else {
                                w = x_parent->left;
                                if (is_red(w)) {
                                        set_red(w, false);
                                        set_red(x_parent, true);
                                        rotate_right(t, x_parent);
                                        w = x_parent->left;
                                }
                                if (!is_red(w->left) && !is_red(w->right)) {
                                        set_red(w, true);
                                        x = x_parent;
                                        x_parent = parent_of(x);
                                } else {
                                        if (!is_red(w->left)) {
                                                set_red(w->right, false);
                                                set_red(w, true);
                                                rotate_left(t, w);
                                                w = x_parent->left;
                                        }
                                        set_red(w, is_red(x_parent));
                                        set_red(x_parent, false);
                                        if (w->left)
                                                set_red(w->left, false);
                                        rotate_right(t, x_parent);
                                        x = t->root;
                                        x_parent = NULL;
                                }
                        }
                }
                if (x)
                        set_red(x, false);
        }

        z->parent_red = 0;
        z->left = z->right = NULL;
        t->n_nodes--;
        size = (z->first == 0 && z->last == UINT64_MAX) ? UINT64_MAX : mapping_table_node_size(z);
        t->n_bytes = t->n_nodes == 0 ? 0 : (t->n_bytes >= size ? t->n_bytes - size : 0);
}

MappingTableNode *mapping_table_first(const MappingTable *t) {
        return t->root ? subtree_min(t->root) : NULL;
}

MappingTableNode *mapping_table_last(const MappingTable *t) {
        return t->root ? subtree_max(t->root) : NULL;
}

MappingTableNode *mapping_table_next(const MappingTableNode *n) {
        if (n->right)
                return subtree_min(n->right);
        while (parent_of(n) && n == parent_of(n)->right)
                n = parent_of(n);
        return parent_of(n);
}

MappingTableNode *mapping_table_prev(const MappingTableNode *n) {
        if (n->left)
                return subtree_max(n->left);
        while (parent_of(n) && n == parent_of(n)->left)
                n = parent_of(n);
        return parent_of(n);
}
