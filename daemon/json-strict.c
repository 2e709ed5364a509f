/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Strict JSON for files an administrator writes: json-c in strict mode (no comments, trailing commas or
 * text after the value), keys unique within each object (json-c keeps the last one silently), and
 * errors that say where, as line and column, and what to fix. */

#include <assert.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json-strict.h"

/* Bytes of a key path in a message ("limits.users.alice"). */
#define KEY_PATH_MAX 256

/* Where a byte offset is, as an editor shows it: lines and columns from 1, columns in characters
 * (UTF-8 continuation bytes do not count). */
static void text_position(const char *text, size_t offset, unsigned *ret_line, unsigned *ret_column) {
        unsigned line = 1, column = 1;

        for (size_t i = 0; i < offset && text[i]; i++) {
                if (text[i] == '\n') {
                        line++;
                        column = 1;
                } else if (((unsigned char) text[i] & 0xc0) != 0x80)
                        column++;
        }
        *ret_line = line;
        *ret_column = column;
}

/* json-c's error descriptions ("continue", "unexpected character") describe its state machine, not the
 * file: say what an administrator would fix, and where. */
static int fail_syntax(BrokerError *e, const char *text, size_t offset, enum json_tokener_error error) {
        unsigned line, column;
        char c = text[offset];
        size_t before = offset;

        while (before > 0 && strchr(" \t\r\n", text[before - 1]))
                before--;
        text_position(text, offset, &line, &column);

        if (error == json_tokener_continue || c == 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                        "not valid JSON: the text ends at line %u, column %u before the "
                                        "top-level object is complete (a missing '}', ']' or '\"')", line, column);
        if ((c == '}' || c == ']') && before > 0 && text[before - 1] == ',')
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                        "not valid JSON at line %u, column %u: a comma before '%c' (JSON has no "
                                        "trailing commas)", line, column, c);
        if (c == '/')
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                        "not valid JSON at line %u, column %u: JSON has no comments", line, column);
        if (error == json_tokener_error_parse_unexpected && (unsigned char) c >= 0x20 && (unsigned char) c < 0x7f)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                        "not valid JSON at line %u, column %u: unexpected '%c'", line, column, c);
        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "not valid JSON at line %u, column %u: %s",
                                line, column, json_tokener_error_desc(error));
}

typedef struct KeyScope {
        json_object *keys;  /* object: key -> offset of its first occurrence; NULL for an array */
        char *member;       /* object: the key being read */
        size_t index;       /* array: the element being read */
} KeyScope;

static void key_scopes_free(KeyScope *scopes, size_t n) {
        for (size_t i = 0; i < n; i++) {
                json_object_put(scopes[i].keys);
                free(scopes[i].member);
        }
}

/* "limits.users.alice", "sim.groups[1]": where in the document the innermost scope is. */
static void scope_path(const KeyScope *scopes, size_t n, char *buf, size_t size) {
        size_t off = 0;

        buf[0] = 0;
        for (size_t i = 0; i + 1 < n && off < size; i++)
                off += scopes[i].keys ?
                        (size_t) snprintf(buf + off, size - off, "%s%s", off ? "." : "", scopes[i].member ?: "") :
                        (size_t) snprintf(buf + off, size - off, "[%zu]", scopes[i].index);
        if (off == 0)
                snprintf(buf, size, "(top level)");
}

/* The offset of the quote that ends the string starting at text[start]. */
static size_t string_end(const char *text, size_t start) {
        size_t i = start + 1;

        while (text[i] && text[i] != text[start])
                i += text[i] == '\\' && text[i + 1] ? 2 : 1;
        return i;
}

/* Two equal keys in one object: json-c keeps the last and says nothing, so a limit written twice (or a
 * section pasted twice) would silently lose one of them. JSON (RFC 8259, section 4) leaves the meaning
 * open; we refuse it, naming the key and both places. json-c accepts single-quoted strings even in
 * strict mode; they are not JSON and are refused here too. Runs on text json-c has accepted, so the
 * structure is sound and the nesting is within its depth limit. */
static int check_keys_unique(BrokerError *e, const char *text) {
        KeyScope scopes[JSON_TOKENER_DEFAULT_DEPTH + 1] = {};
        size_t depth = 0;
        bool expect_key = false;
        int r = 0;

        for (size_t i = 0; text[i] && r == 0; i++) {
                KeyScope *s = depth > 0 ? &scopes[depth - 1] : NULL;
                unsigned line, column;

                switch (text[i]) {
                case '{':
                case '[':
                        if (depth >= ELEMENTSOF(scopes)) {
                                text_position(text, i, &line, &column);
                                r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                                     "line %u, column %u: nested too deeply", line, column);
                                break;
                        }
                        scopes[depth] = (KeyScope) {};
                        if (text[i] == '{') {
                                scopes[depth].keys = json_object_new_object();
                                if (!scopes[depth].keys) {
                                        r = -ENOMEM;
                                        break;
                                }
                        }
                        depth++;
                        expect_key = text[i] == '{';
                        break;
                case '}':
                case ']':
                        if (depth > 0) {
                                key_scopes_free(&scopes[depth - 1], 1);
                                depth--;
                        }
                        break;
                case ',':
                        if (s && s->keys)
                                expect_key = true;
                        else if (s)
                                s->index++;
                        break;
                case '\'':
                        text_position(text, i, &line, &column);
                        r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                             "not valid JSON at line %u, column %u: strings and keys take double "
                                             "quotes", line, column);
                        break;
                case '"': {
                        size_t end = string_end(text, i);
                        json_object *first;
                        _cleanup_free_ char *key = NULL;

                        if (!expect_key || !s || !s->keys) {
                                i = end;
                                break;
                        }
                        expect_key = false;
                        if (memchr(text + i, '\\', end - i)) {
                                /* Escapes: let json-c decode the string, so "\u0061" and "a" are equal. */
                                json_tokener *tok = json_tokener_new();
                                json_object *o = tok ? json_tokener_parse_ex(tok, text + i, (int) (end - i + 1)) : NULL;
                                if (json_object_is_type(o, json_type_string))
                                        key = strdup(json_object_get_string(o));
                                json_object_put(o);
                                json_tokener_free(tok);
                        } else
                                key = strndup(text + i + 1, end - i - 1);
                        if (!key) {
                                r = -ENOMEM;
                                break;
                        }
                        if (json_object_object_get_ex(s->keys, key, &first)) {
                                char path[KEY_PATH_MAX];
                                unsigned first_line, first_column;

                                scope_path(scopes, depth, path, sizeof(path));
                                text_position(text, (size_t) json_object_get_int64(first), &first_line, &first_column);
                                text_position(text, i, &line, &column);
                                r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                                     "%s: key \"%s\" is given twice, at line %u, column %u and at "
                                                     "line %u, column %u; keep one", path, key, first_line,
                                                     first_column, line, column);
                                break;
                        }
                        if (json_object_object_add(s->keys, key, json_object_new_int64((int64_t) i)) < 0) {
                                r = -ENOMEM;
                                break;
                        }
                        free(s->member);
                        s->member = TAKE_PTR(key);
                        i = end;
                        break;
                }
                }
        }
        key_scopes_free(scopes, depth);
        return r;
}

int json_parse_strict(const char *text, json_object **ret, BrokerError *e) {
        json_tokener *tok;
        json_object *root;
        int r;

        assert(text);
        assert(ret);

        tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        root = json_tokener_parse_ex(tok, text, (int) strlen(text));
        if (!root || json_tokener_get_error(tok) != json_tokener_success) {
                r = fail_syntax(e, text, json_tokener_get_parse_end(tok), json_tokener_get_error(tok));
                json_object_put(root);
                json_tokener_free(tok);
                return r;
        }
        json_tokener_free(tok);

        r = check_keys_unique(e, text);
        if (r < 0) {
                json_object_put(root);
                return r;
        }
        *ret = root;
        return 0;
}
