/* convert.c - JSON text <-> Lua values, for events and grwhd.json. */
#include "convert.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "../core/util.h"

/* ------------------------------------------------------------------ */
/* Decoding: a recursive descent straight onto the Lua stack.          */

struct dec {
    lua_State *L;
    const char *s;
    size_t len, pos;
    int depth;
    int array_mt;       /* stack index of the array metatable */
};

static void __attribute__((noreturn))
dec_fail(struct dec *d, const char *what)
{
    luaL_error(d->L, "JSON: %s at byte %d", what, (int)d->pos + 1);
    abort(); /* not reached */
}

static void
dec_ws(struct dec *d)
{
    while (d->pos < d->len) {
        char c = d->s[d->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        d->pos++;
    }
}

static void dec_value(struct dec *d);

static int
hex4(struct dec *d, unsigned *out)
{
    unsigned v = 0;

    if (d->pos + 4 > d->len)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = d->s[d->pos + (size_t)i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    d->pos += 4;
    *out = v;
    return 0;
}

static void
add_utf8(luaL_Buffer *b, unsigned cp)
{
    char u[4];
    size_t n;

    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    luaL_addlstring(b, u, n);
}

/* \uXXXX, with surrogate pairs joined; a lone surrogate becomes U+FFFD. */
static void
dec_unicode(struct dec *d, luaL_Buffer *b)
{
    unsigned cp, lo;

    if (hex4(d, &cp) != 0)
        dec_fail(d, "bad \\u escape");
    if (cp >= 0xd800 && cp <= 0xdbff) {
        size_t save = d->pos;
        if (d->pos + 2 <= d->len && d->s[d->pos] == '\\' &&
            d->s[d->pos + 1] == 'u') {
            d->pos += 2;
            if (hex4(d, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
                add_utf8(b, 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00));
                return;
            }
        }
        d->pos = save;
        cp = 0xfffd;
    } else if (cp >= 0xdc00 && cp <= 0xdfff) {
        cp = 0xfffd;
    }
    add_utf8(b, cp);
}

static void
dec_string(struct dec *d)
{
    luaL_Buffer b;
    size_t i;

    d->pos++; /* opening quote */
    /* Most strings have no escape: push them straight from the text. */
    for (i = d->pos; i < d->len; i++) {
        unsigned char c = (unsigned char)d->s[i];
        if (c == '"' || c == '\\' || c < 0x20)
            break;
    }
    if (i < d->len && d->s[i] == '"') {
        lua_pushlstring(d->L, d->s + d->pos, i - d->pos);
        d->pos = i + 1;
        return;
    }
    luaL_buffinit(d->L, &b);
    for (;;) {
        size_t start = d->pos;
        char c;

        while (d->pos < d->len && d->s[d->pos] != '"' &&
               d->s[d->pos] != '\\' && (unsigned char)d->s[d->pos] >= 0x20)
            d->pos++;
        luaL_addlstring(&b, d->s + start, d->pos - start);
        if (d->pos >= d->len)
            dec_fail(d, "unterminated string");
        c = d->s[d->pos++];
        if (c == '"')
            break;
        if (c != '\\')
            dec_fail(d, "control character in string");
        if (d->pos >= d->len)
            dec_fail(d, "unterminated string");
        c = d->s[d->pos++];
        switch (c) {
        case '"': luaL_addchar(&b, '"'); break;
        case '\\': luaL_addchar(&b, '\\'); break;
        case '/': luaL_addchar(&b, '/'); break;
        case 'b': luaL_addchar(&b, '\b'); break;
        case 'f': luaL_addchar(&b, '\f'); break;
        case 'n': luaL_addchar(&b, '\n'); break;
        case 'r': luaL_addchar(&b, '\r'); break;
        case 't': luaL_addchar(&b, '\t'); break;
        case 'u': dec_unicode(d, &b); break;
        default: d->pos--; dec_fail(d, "bad escape");
        }
    }
    luaL_pushresult(&b);
}

static bool
is_digit_at(const struct dec *d, size_t i)
{
    return i < d->len && d->s[i] >= '0' && d->s[i] <= '9';
}

/* RFC 8259 numbers only: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static void
dec_number(struct dec *d)
{
    size_t start = d->pos;
    bool is_float = false;
    char tmp[512];
    size_t n;

    if (d->pos < d->len && d->s[d->pos] == '-')
        d->pos++;
    if (!is_digit_at(d, d->pos))
        dec_fail(d, "unexpected character");
    if (d->s[d->pos] == '0') {
        d->pos++;
        if (is_digit_at(d, d->pos))
            dec_fail(d, "leading zero in number");
    } else {
        while (is_digit_at(d, d->pos))
            d->pos++;
    }
    if (d->pos < d->len && d->s[d->pos] == '.') {
        is_float = true;
        d->pos++;
        if (!is_digit_at(d, d->pos))
            dec_fail(d, "digits expected after '.'");
        while (is_digit_at(d, d->pos))
            d->pos++;
    }
    if (d->pos < d->len && (d->s[d->pos] == 'e' || d->s[d->pos] == 'E')) {
        is_float = true;
        d->pos++;
        if (d->pos < d->len && (d->s[d->pos] == '+' || d->s[d->pos] == '-'))
            d->pos++;
        if (!is_digit_at(d, d->pos))
            dec_fail(d, "digits expected in exponent");
        while (is_digit_at(d, d->pos))
            d->pos++;
    }
    n = d->pos - start;
    if (n >= sizeof(tmp))
        dec_fail(d, "number too long");
    memcpy(tmp, d->s + start, n);
    tmp[n] = '\0';
    if (!is_float) {
        long long v;

        errno = 0;
        v = strtoll(tmp, NULL, 10);
        if (errno == 0) {
            lua_pushinteger(d->L, (lua_Integer)v);
            return;
        }
        /* Too large for an integer: a float, as JSON readers agree. */
    }
    lua_pushnumber(d->L, (lua_Number)strtod(tmp, NULL));
}

static void
dec_literal(struct dec *d, const char *word)
{
    size_t n = strlen(word);

    if (d->pos + n > d->len || memcmp(d->s + d->pos, word, n) != 0)
        dec_fail(d, "unexpected character");
    d->pos += n;
}

static void
dec_enter(struct dec *d)
{
    if (++d->depth > GRWHD_CONVERT_DEPTH_MAX)
        dec_fail(d, "nesting too deep");
    luaL_checkstack(d->L, 4, "JSON decode");
}

static void
dec_object(struct dec *d)
{
    dec_enter(d);
    d->pos++;
    lua_newtable(d->L);
    dec_ws(d);
    if (d->pos < d->len && d->s[d->pos] == '}') {
        d->pos++;
        d->depth--;
        return;
    }
    for (;;) {
        dec_ws(d);
        if (d->pos >= d->len || d->s[d->pos] != '"')
            dec_fail(d, "expected a string key");
        dec_string(d);                  /* table key */
        dec_ws(d);
        if (d->pos >= d->len || d->s[d->pos] != ':')
            dec_fail(d, "expected ':'");
        d->pos++;
        dec_value(d);                   /* table key value */
        lua_rawset(d->L, -3);           /* table */
        dec_ws(d);
        if (d->pos < d->len && d->s[d->pos] == ',') {
            d->pos++;
            continue;
        }
        if (d->pos < d->len && d->s[d->pos] == '}') {
            d->pos++;
            break;
        }
        dec_fail(d, "expected ',' or '}'");
    }
    d->depth--;
}

static void
dec_array(struct dec *d)
{
    lua_Integer i = 0;

    dec_enter(d);
    d->pos++;
    lua_newtable(d->L);
    lua_pushvalue(d->L, d->array_mt);
    lua_setmetatable(d->L, -2);
    dec_ws(d);
    if (d->pos < d->len && d->s[d->pos] == ']') {
        d->pos++;
        d->depth--;
        return;
    }
    for (;;) {
        dec_value(d);                   /* array value */
        lua_rawseti(d->L, -2, ++i);     /* array */
        dec_ws(d);
        if (d->pos < d->len && d->s[d->pos] == ',') {
            d->pos++;
            continue;
        }
        if (d->pos < d->len && d->s[d->pos] == ']') {
            d->pos++;
            break;
        }
        dec_fail(d, "expected ',' or ']'");
    }
    d->depth--;
}

static void
dec_value(struct dec *d)
{
    dec_ws(d);
    if (d->pos >= d->len)
        dec_fail(d, "unexpected end");
    switch (d->s[d->pos]) {
    case '{': dec_object(d); break;
    case '[': dec_array(d); break;
    case '"': dec_string(d); break;
    case 't': dec_literal(d, "true"); lua_pushboolean(d->L, 1); break;
    case 'f': dec_literal(d, "false"); lua_pushboolean(d->L, 0); break;
    case 'n': dec_literal(d, "null"); lua_pushlightuserdata(d->L, NULL);
        break;
    default: dec_number(d);
    }
}

void
convert_decode(lua_State *L, const char *s, size_t len)
{
    struct dec d = {.L = L, .s = s, .len = len};

    luaL_checkstack(L, 8, "JSON decode");
    luaL_getmetatable(L, GRWHD_ARRAY_MT);
    d.array_mt = lua_gettop(L);
    dec_value(&d);
    dec_ws(&d);
    if (d.pos != d.len)
        dec_fail(&d, "data after the value");
    lua_remove(L, d.array_mt);
}

void
convert_init(lua_State *L)
{
    if (luaL_newmetatable(L, GRWHD_ARRAY_MT)) {
        lua_pushliteral(L, "array");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
}

/* ------------------------------------------------------------------ */
/* Encoding into a growable buffer boxed in a userdata, so a Lua error */
/* half-way frees it through __gc instead of leaking it.              */

struct enc {
    char *buf;
    size_t len, cap;
};

static int
enc_gc(lua_State *L)
{
    struct enc *e = lua_touserdata(L, 1);

    free(e->buf);
    e->buf = NULL;
    return 0;
}

static void
enc_put(lua_State *L, struct enc *e, const char *s, size_t n)
{
    if (e->len + n > e->cap) {
        size_t cap = e->cap ? e->cap : 256;
        char *p;

        while (cap < e->len + n)
            cap *= 2;
        p = realloc(e->buf, cap);
        if (p == NULL)
            luaL_error(L, "JSON encode: out of memory");
        e->buf = p;
        e->cap = cap;
    }
    memcpy(e->buf + e->len, s, n);
    e->len += n;
}

static void
enc_string(lua_State *L, struct enc *e, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;

    enc_put(L, e, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6] = {'\\', 'u', '0', '0', 0, 0};
        const char *rep = NULL;
        size_t rn = 2;

        if (c >= 0x80) {
            /* Bytes that are not UTF-8 would make the text invalid JSON. */
            size_t want = util_utf8_len(c);
            size_t ok = util_utf8_valid((const unsigned char *)s + i,
                                        n - i < want ? n - i : want);

            if (want > 0 && ok == want) {
                i += want - 1;      /* one whole character, as it is */
                continue;
            }
            enc_put(L, e, s + start, i - start);
            enc_put(L, e, "\\ufffd", 6);
            start = i + 1;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        switch (c) {
        case '"': rep = "\\\""; break;
        case '\\': rep = "\\\\"; break;
        case '\n': rep = "\\n"; break;
        case '\r': rep = "\\r"; break;
        case '\t': rep = "\\t"; break;
        default:
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            rep = esc;
            rn = 6;
        }
        enc_put(L, e, s + start, i - start);
        enc_put(L, e, rep, rn);
        start = i + 1;
    }
    enc_put(L, e, s + start, n - start);
    enc_put(L, e, "\"", 1);
}

/* How a table is written: an array needs keys 1..n and nothing else. */
static int
table_is_array(lua_State *L, int idx, lua_Integer *n)
{
    lua_Integer count = 0, max = 0;

    if (luaL_getmetafield(L, idx, "__name") != LUA_TNIL) {
        int marked = lua_type(L, -1) == LUA_TSTRING &&
                     strcmp(lua_tostring(L, -1), "array") == 0;
        lua_pop(L, 1);
        if (marked) {
            *n = (lua_Integer)lua_rawlen(L, idx);
            return 1;
        }
    }
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
            lua_pop(L, 1);
            return 0;
        }
        count++;
        if (lua_tointeger(L, -1) > max)
            max = lua_tointeger(L, -1);
    }
    *n = max;
    return count > 0 && count == max;
}

static void enc_value(lua_State *L, struct enc *e, int idx, int depth);
static void enc_object(lua_State *L, struct enc *e, int idx, int depth);

static void
enc_table(lua_State *L, struct enc *e, int idx, int depth)
{
    lua_Integer n;

    /* depth counts the tables around this one: the limit is the one
     * dec_enter keeps, so decode reads whatever encode writes. */
    if (depth + 1 > GRWHD_CONVERT_DEPTH_MAX)
        luaL_error(L, "JSON encode: nesting too deep (over %d; a cycle?)",
                   GRWHD_CONVERT_DEPTH_MAX);
    luaL_checkstack(L, 6, "JSON encode");
    if (table_is_array(L, idx, &n)) {
        enc_put(L, e, "[", 1);
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1)
                enc_put(L, e, ",", 1);
            lua_rawgeti(L, idx, i);
            enc_value(L, e, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        enc_put(L, e, "]", 1);
        return;
    }
    enc_object(L, e, idx, depth);
}

struct key {
    const char *s;
    size_t n;
};

static int
key_cmp(const void *a, const void *b)
{
    const struct key *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);

    return c != 0 ? c : (x->n > y->n) - (x->n < y->n);
}

/*
 * Members are written in byte order of their names, so equal tables encode
 * to equal text (signatures, idempotency keys and tests rely on that).
 */
static void
enc_object(lua_State *L, struct enc *e, int idx, int depth)
{
    int names, orig, count = 0;
    struct key *keys;

    lua_newtable(L);                            /* names: i -> name */
    names = lua_gettop(L);
    lua_newtable(L);                            /* orig: name -> int key */
    orig = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {             /* key value */
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            lua_pushvalue(L, -1);
        } else if (lua_isinteger(L, -1)) {
            lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, -1));
            lua_pushvalue(L, -1);               /* key name name */
            lua_pushvalue(L, -3);
            lua_rawset(L, orig);                /* key name */
        } else {
            luaL_error(L, "JSON encode: table key of type %s",
                       luaL_typename(L, -1));
        }
        lua_rawseti(L, names, ++count);         /* key */
    }
    keys = lua_newuserdatauv(L, (size_t)count * sizeof(*keys) + 1, 0);
    for (int i = 0; i < count; i++) {
        lua_rawgeti(L, names, i + 1);
        keys[i].s = lua_tolstring(L, -1, &keys[i].n);  /* held by names */
        lua_pop(L, 1);
    }
    qsort(keys, (size_t)count, sizeof(*keys), key_cmp);
    enc_put(L, e, "{", 1);
    for (int i = 0; i < count; i++) {
        if (i > 0)
            enc_put(L, e, ",", 1);
        enc_string(L, e, keys[i].s, keys[i].n);
        enc_put(L, e, ":", 1);
        lua_pushlstring(L, keys[i].s, keys[i].n);
        if (lua_rawget(L, orig) == LUA_TNIL) {  /* a string key */
            lua_pop(L, 1);
            lua_pushlstring(L, keys[i].s, keys[i].n);
        }
        lua_rawget(L, idx);                     /* value */
        enc_value(L, e, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    enc_put(L, e, "}", 1);
    lua_settop(L, names - 1);
}

static void
enc_value(lua_State *L, struct enc *e, int idx, int depth)
{
    char num[64];
    int n;

    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        enc_put(L, e, "null", 4);
        break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) != NULL)
            luaL_error(L, "JSON encode: userdata is not JSON");
        enc_put(L, e, "null", 4);
        break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            enc_put(L, e, "true", 4);
        else
            enc_put(L, e, "false", 5);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            n = snprintf(num, sizeof(num), "%lld",
                         (long long)lua_tointeger(L, idx));
        } else {
            double v = (double)lua_tonumber(L, idx);
            if (!isfinite(v))
                luaL_error(L, "JSON encode: %f is not a JSON number", v);
            n = snprintf(num, sizeof(num), "%.17g", v);
        }
        enc_put(L, e, num, (size_t)n);
        break;
    case LUA_TSTRING: {
        size_t sn;
        const char *s = lua_tolstring(L, idx, &sn);
        enc_string(L, e, s, sn);
        break;
    }
    case LUA_TTABLE:
        enc_table(L, e, idx, depth);
        break;
    default:
        luaL_error(L, "JSON encode: %s is not JSON", luaL_typename(L, idx));
    }
}

void
convert_encode(lua_State *L, int idx)
{
    struct enc *e;

    idx = lua_absindex(L, idx);
    e = lua_newuserdatauv(L, sizeof(*e), 0);    /* box */
    memset(e, 0, sizeof(*e));
    if (luaL_newmetatable(L, "grwhd.encbuf")) {
        lua_pushcfunction(L, enc_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    enc_value(L, e, idx, 0);
    lua_pushlstring(L, e->buf, e->len);         /* box string */
    free(e->buf);
    e->buf = NULL;
    lua_remove(L, -2);                          /* string */
}
