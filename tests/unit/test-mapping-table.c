/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mapping-table.h"

typedef struct Item {
        MappingTableNode node;
        bool in;
} Item;

/* Returns the black height; fails the test on any broken invariant. */
static int check_subtree(const MappingTableNode *n, const MappingTableNode *parent, size_t *count) {
        int lh, rh;

        if (!n)
                return 1;
        assert_ptr_equal(mapping_table_node_parent(n), parent);
        assert_true(n->first <= n->last);
        if (mapping_table_node_red(n)) {
                assert_false(n->left && mapping_table_node_red(n->left));
                assert_false(n->right && mapping_table_node_red(n->right));
        }
        if (n->left)
                assert_true(n->left->last < n->first);
        if (n->right)
                assert_true(n->right->first > n->last);
        lh = check_subtree(n->left, n, count);
        rh = check_subtree(n->right, n, count);
        assert_int_equal(lh, rh);
        (*count)++;
        return lh + !mapping_table_node_red(n);
}

static void check_tree(const MappingTable *t) {
        size_t count = 0;
        uint64_t bytes = 0;

        assert_false(t->root && mapping_table_node_red(t->root));
        check_subtree(t->root, NULL, &count);
        assert_int_equal(count, t->n_nodes);

        const MappingTableNode *prev = NULL;
        for (MappingTableNode *n = mapping_table_first(t); n; n = mapping_table_next(n)) {
                if (prev)
                        assert_true(prev->last < n->first);
                /* Saturating, like the table: [0, 2^64-1] alone is 2^64 bytes (its size wraps to 0). */
                uint64_t size = n->first == 0 && n->last == UINT64_MAX ? UINT64_MAX : mapping_table_node_size(n);
                bytes = bytes + size < bytes ? UINT64_MAX : bytes + size;
                prev = n;
        }
        assert_int_equal(bytes, t->n_bytes);
}

static void test_basics(void **state) {
        MappingTable t = MAPPING_TABLE_INIT;
        Item a, b, c;
        MappingTableNode *conflict = NULL;

        mapping_table_node_init(&a.node, 0x1000, 0x1000);
        mapping_table_node_init(&b.node, 0x3000, 0x2000);
        mapping_table_node_init(&c.node, 0x2000, 0x1000);

        assert_int_equal(mapping_table_insert(&t, &a.node, NULL), 0);
        assert_int_equal(mapping_table_insert(&t, &b.node, NULL), 0);
        /* Touching both neighbours is not an overlap. */
        assert_int_equal(mapping_table_insert(&t, &c.node, NULL), 0);
        check_tree(&t);
        assert_int_equal(mapping_table_size(&t), 3);
        assert_int_equal(mapping_table_bytes(&t), 0x4000);

        assert_ptr_equal(mapping_table_find(&t, 0x1000), &a.node);
        assert_ptr_equal(mapping_table_find(&t, 0x1fff), &a.node);
        assert_ptr_equal(mapping_table_find(&t, 0x2000), &c.node);
        assert_ptr_equal(mapping_table_find(&t, 0x4fff), &b.node);
        assert_null(mapping_table_find(&t, 0x5000));
        assert_null(mapping_table_find(&t, 0xfff));

        Item d;
        mapping_table_node_init(&d.node, 0x2800, 0x1000); /* inside c, into b */
        assert_int_equal(mapping_table_insert(&t, &d.node, &conflict), -EEXIST);
        assert_ptr_equal(conflict, &c.node);
        mapping_table_node_init(&d.node, 0, 0x6000); /* containing everything */
        assert_int_equal(mapping_table_insert(&t, &d.node, &conflict), -EEXIST);
        assert_ptr_equal(conflict, &a.node);
        mapping_table_node_init(&d.node, 0x1000, 0x1000); /* identical */
        assert_int_equal(mapping_table_insert(&t, &d.node, &conflict), -EEXIST);
        assert_ptr_equal(conflict, &a.node);
        mapping_table_node_init(&d.node, 0x4000, 0x800); /* contained */
        assert_int_equal(mapping_table_insert(&t, &d.node, &conflict), -EEXIST);
        assert_ptr_equal(conflict, &b.node);
        assert_int_equal(mapping_table_size(&t), 3);
        check_tree(&t);

        assert_ptr_equal(mapping_table_first_intersecting(&t, 0, 0xfff), NULL);
        assert_ptr_equal(mapping_table_first_intersecting(&t, 0, 0x1000), &a.node);
        assert_ptr_equal(mapping_table_first_intersecting(&t, 0x1800, 0x10000), &a.node);
        assert_ptr_equal(mapping_table_first_intersecting(&t, 0x2000, 0x2000), &c.node);
        assert_ptr_equal(mapping_table_first_intersecting(&t, 0x5000, UINT64_MAX), NULL);

        assert_ptr_equal(mapping_table_first(&t), &a.node);
        assert_ptr_equal(mapping_table_last(&t), &b.node);
        assert_ptr_equal(mapping_table_next(&a.node), &c.node);
        assert_ptr_equal(mapping_table_prev(&b.node), &c.node);
        assert_null(mapping_table_prev(&a.node));
        assert_null(mapping_table_next(&b.node));

        mapping_table_remove(&t, &c.node);
        check_tree(&t);
        assert_null(mapping_table_find(&t, 0x2000));
        assert_int_equal(mapping_table_bytes(&t), 0x3000);
        mapping_table_remove(&t, &a.node);
        mapping_table_remove(&t, &b.node);
        assert_null(t.root);
        assert_int_equal(mapping_table_size(&t), 0);
        assert_int_equal(mapping_table_bytes(&t), 0);
}

static void test_edges_of_address_space(void **state) {
        MappingTable t = MAPPING_TABLE_INIT;
        Item lo, hi, all;

        mapping_table_node_init(&lo.node, 0, 0x1000);
        mapping_table_node_init(&hi.node, UINT64_MAX - 0xfff, 0x1000);
        assert_int_equal(hi.node.last, UINT64_MAX);
        assert_int_equal(mapping_table_insert(&t, &lo.node, NULL), 0);
        assert_int_equal(mapping_table_insert(&t, &hi.node, NULL), 0);
        assert_ptr_equal(mapping_table_find(&t, UINT64_MAX), &hi.node);
        assert_ptr_equal(mapping_table_find(&t, 0), &lo.node);
        assert_ptr_equal(mapping_table_first_intersecting(&t, 0x1000, UINT64_MAX), &hi.node);
        assert_null(mapping_table_first_intersecting(&t, 0x1000, UINT64_MAX - 0x1000));
        check_tree(&t);

        mapping_table_node_init(&all.node, 0, UINT64_MAX); /* [0, 2^64-2] */
        assert_int_equal(mapping_table_insert(&t, &all.node, NULL), -EEXIST);
        mapping_table_remove(&t, &lo.node);
        mapping_table_remove(&t, &hi.node);
        all.node = (MappingTableNode) { .first = 0, .last = UINT64_MAX };
        assert_int_equal(mapping_table_insert(&t, &all.node, NULL), 0);
        assert_int_equal(mapping_table_bytes(&t), UINT64_MAX); /* saturated */
        mapping_table_remove(&t, &all.node);
        assert_int_equal(mapping_table_bytes(&t), 0);
}

/* Every way a new interval can meet an existing one, each tried against a table holding only that one. */
static void test_overlap_edges(void **state) {
        static const struct {
                uint64_t existing_first, existing_last, first, last;
                bool overlaps;
        } cases[] = {
                { 0x1000, 0x1fff, 0x0000, 0x0fff, false }, /* touching from below */
                { 0x1000, 0x1fff, 0x2000, 0x2fff, false }, /* touching from above */
                { 0x1000, 0x1fff, 0x0000, 0x1000, true },  /* one address at its start */
                { 0x1000, 0x1fff, 0x1fff, 0x2fff, true },  /* one address at its end */
                { 0x1000, 0x1fff, 0x1fff, 0x1fff, true },  /* a single address inside */
                { 0x1000, 0x1fff, 0x1000, 0x1fff, true },  /* identical */
                { 0x1000, 0x1fff, 0x1400, 0x17ff, true },  /* contained */
                { 0x1000, 0x1fff, 0x0800, 0x27ff, true },  /* containing */
                { 0x1000, 0x1fff, 0x1000, 0x17ff, true },  /* same start, shorter */
                { 0x1000, 0x1fff, 0x1800, 0x1fff, true },  /* same end, shorter */
                { 0x0000, 0x0fff, 0x0000, 0x0000, true },  /* at address 0 */
                { 0x0000, 0x0fff, 0x1000, 0x1fff, false },
                { 0x0000, 0x0000, 0x0001, UINT64_MAX, false },
                { 0x0000, 0x0000, 0x0000, UINT64_MAX, true },
                { UINT64_MAX - 0xfff, UINT64_MAX, UINT64_MAX, UINT64_MAX, true },
                { UINT64_MAX - 0xfff, UINT64_MAX, UINT64_MAX - 0x1fff, UINT64_MAX - 0x1000, false },
                { UINT64_MAX - 0xfff, UINT64_MAX, UINT64_MAX - 0x1fff, UINT64_MAX - 0xfff, true },
                { UINT64_MAX, UINT64_MAX, 0x0000, UINT64_MAX - 1, false },
                { UINT64_MAX, UINT64_MAX, 0x0000, UINT64_MAX, true },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                MappingTable t = MAPPING_TABLE_INIT;
                Item existing = {}, item = {};
                MappingTableNode *conflict = NULL;

                existing.node.first = cases[i].existing_first;
                existing.node.last = cases[i].existing_last;
                item.node.first = cases[i].first;
                item.node.last = cases[i].last;
                assert_int_equal(mapping_table_insert(&t, &existing.node, NULL), 0);

                /* Intersection is symmetric, and so is what first_intersecting() sees. */
                assert_ptr_equal(mapping_table_first_intersecting(&t, cases[i].first, cases[i].last),
                                 cases[i].overlaps ? &existing.node : NULL);

                if (cases[i].overlaps) {
                        assert_int_equal(mapping_table_insert(&t, &item.node, &conflict), -EEXIST);
                        assert_ptr_equal(conflict, &existing.node);
                        /* Unchanged: still one node, and the refused node's links were not touched. */
                        assert_int_equal(mapping_table_size(&t), 1);
                        assert_int_equal(mapping_table_bytes(&t), mapping_table_node_size(&existing.node));
                        assert_ptr_equal(t.root, &existing.node);
                        assert_null(existing.node.left);
                        assert_null(existing.node.right);
                } else {
                        assert_int_equal(mapping_table_insert(&t, &item.node, &conflict), 0);
                        assert_null(conflict);
                        assert_int_equal(mapping_table_size(&t), 2);
                        check_tree(&t);
                        /* Also the other way round: the existing one does not fit back in. */
                        mapping_table_remove(&t, &existing.node);
                        assert_int_equal(mapping_table_insert(&t, &existing.node, NULL), 0);
                        mapping_table_remove(&t, &item.node);
                }
                mapping_table_remove(&t, &existing.node);
                assert_null(t.root);
                assert_int_equal(mapping_table_bytes(&t), 0);
        }
}

/* Reference model: a bitmap over a small universe of 4 KiB slots. */
#define SLOTS 2048
static Item *owner[SLOTS];

/* In-order iteration, both ways, visits exactly the model's intervals in address order. */
static void check_order_against_model(const MappingTable *t) {
        Item *expect[SLOTS];
        size_t n = 0, i = 0;

        for (unsigned s = 0; s < SLOTS; s++)
                if (owner[s] && (n == 0 || expect[n - 1] != owner[s]))
                        expect[n++] = owner[s];
        assert_int_equal(mapping_table_size(t), n);

        for (MappingTableNode *node = mapping_table_first(t); node; node = mapping_table_next(node)) {
                assert_true(i < n);
                assert_ptr_equal(node, &expect[i++]->node);
        }
        assert_int_equal(i, n);
        for (MappingTableNode *node = mapping_table_last(t); node; node = mapping_table_prev(node)) {
                assert_true(i > 0);
                assert_ptr_equal(node, &expect[--i]->node);
        }
        assert_int_equal(i, 0);
}

static void test_random_against_model(void **state) {
        MappingTable t = MAPPING_TABLE_INIT;
        Item *items = calloc(SLOTS, sizeof(Item));
        unsigned seed = 12345;

        assert_non_null(items);
        memset(owner, 0, sizeof(owner));

        for (int op = 0; op < 40000; op++) {
                unsigned start = rand_r(&seed) % SLOTS, len = 1 + rand_r(&seed) % 8;
                if (start + len > SLOTS)
                        len = SLOTS - start;

                if (rand_r(&seed) % 3 != 0) {
                        Item *it = &items[start];
                        bool free_in_model = true;
                        if (it->in)
                                continue;
                        for (unsigned s = start; s < start + len; s++)
                                if (owner[s])
                                        free_in_model = false;
                        mapping_table_node_init(&it->node, (uint64_t) start << 12, (uint64_t) len << 12);
                        int r = mapping_table_insert(&t, &it->node, NULL);
                        assert_int_equal(r, free_in_model ? 0 : -EEXIST);
                        if (r == 0) {
                                it->in = true;
                                for (unsigned s = start; s < start + len; s++)
                                        owner[s] = it;
                        }
                } else {
                        MappingTableNode *n = mapping_table_find(&t, (uint64_t) start << 12);
                        assert_ptr_equal(n, owner[start] ? &owner[start]->node : NULL);
                        if (!n)
                                continue;
                        Item *it = (Item *) n;
                        for (uint64_t s = n->first >> 12; s <= n->last >> 12; s++)
                                owner[s] = NULL;
                        mapping_table_remove(&t, n);
                        it->in = false;
                }

                /* first_intersecting agrees with the model. */
                unsigned q = rand_r(&seed) % SLOTS, ql = 1 + rand_r(&seed) % 16;
                if (q + ql > SLOTS)
                        ql = SLOTS - q;
                Item *expect = NULL;
                for (unsigned s = q; s < q + ql && !expect; s++)
                        expect = owner[s];
                MappingTableNode *got = mapping_table_first_intersecting(&t, (uint64_t) q << 12,
                                                                         ((uint64_t) (q + ql) << 12) - 1);
                assert_ptr_equal(got, expect ? &expect->node : NULL);

                if (op % 997 == 0) {
                        check_tree(&t);
                        check_order_against_model(&t);
                }
        }
        check_tree(&t);
        check_order_against_model(&t);
        free(items);
}

static void test_many_and_range_removal(void **state) {
        MappingTable t = MAPPING_TABLE_INIT;
        const size_t n = 65535;
        Item *items = calloc(n, sizeof(Item));
        MappingTableNode *node, *next;

        assert_non_null(items);
        /* Insert in a scrambled order. */
        for (size_t i = 0; i < n; i++) {
                size_t k = (i * 40507) % n;
                mapping_table_node_init(&items[k].node, (uint64_t) k * 0x2000, 0x1000);
                assert_int_equal(mapping_table_insert(&t, &items[k].node, NULL), 0);
        }
        check_tree(&t);
        assert_int_equal(mapping_table_size(&t), n);
        for (size_t k = 0; k < n; k += 97)
                assert_ptr_equal(mapping_table_find(&t, (uint64_t) k * 0x2000 + 0xfff), &items[k].node);

        /* Remove everything in [0x2000*1000, 0x2000*2000) the way container_unmap() does. */
        uint64_t first = 0x2000ULL * 1000, last = 0x2000ULL * 2000 - 1;
        for (node = mapping_table_first_intersecting(&t, first, last); node && node->first <= last; node = next) {
                next = mapping_table_next(node);
                mapping_table_remove(&t, node);
        }
        check_tree(&t);
        assert_int_equal(mapping_table_size(&t), n - 1000);
        assert_null(mapping_table_first_intersecting(&t, first, last));

        /* A range removed while iterating the whole table: every node starting in slots [3000, 4000). */
        MAPPING_TABLE_FOREACH_SAFE(node, next, &t)
                if (node->first >= 0x2000ULL * 3000 && node->first < 0x2000ULL * 4000)
                        mapping_table_remove(&t, node);
        check_tree(&t);
        assert_int_equal(mapping_table_size(&t), n - 2000);
        assert_null(mapping_table_first_intersecting(&t, 0x2000ULL * 3000, 0x2000ULL * 4000 - 1));
        assert_ptr_equal(mapping_table_find(&t, 0x2000ULL * 2999), &items[2999].node);
        assert_ptr_equal(mapping_table_find(&t, 0x2000ULL * 4000), &items[4000].node);

        MAPPING_TABLE_FOREACH_SAFE(node, next, &t)
                mapping_table_remove(&t, node);
        assert_int_equal(mapping_table_bytes(&t), 0);
        assert_int_equal(mapping_table_size(&t), 0);
        assert_null(t.root);
        free(items);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_basics),
                cmocka_unit_test(test_edges_of_address_space),
                cmocka_unit_test(test_overlap_edges),
                cmocka_unit_test(test_random_against_model),
                cmocka_unit_test(test_many_and_range_removal),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
