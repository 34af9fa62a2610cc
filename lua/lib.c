/* lib.c - the grwhd module that scripts see. */
#include "lib.h"

#include <stdlib.h>
#include <math.h>
#include <string.h>

#include <lauxlib.h>

#include "../core/log.h"
#include "../core/util.h"
#include "convert.h"
#include "http.h"
#include "runtime.h"

/*
 * Room a message may take in a line once escaped: what is left keeps
 * ts, level, spool_id and attempt (about 120 bytes) and the line's end,
 * so a long message cannot push the event's ids out of its line.
 */
#define LIB_LOG_MSG_MAX (GRWHD_LOG_LINE_MAX - 256)
/*
 * Fields a line takes at most, more than a line can show.  Renaming keys
 * that collide costs about the cube of their number, in C, where the
 * handler's time limit cannot stop it.
 */
#define LIB_LOG_FIELDS_MAX 256

/* Names the daemon writes on a script's line; fields get other names. */
static const char *const own_names[] = {
    "ts", "level", "msg", "spool_id", "attempt", "truncated", NULL,
};

/*
 * Bytes of s[0..n) that fit in max once the log escapes them as
 * core/log.c does: 2 for \" \\ \n \r \t, 6 for other control bytes, 3
 * for a byte outside a UTF-8 character, which becomes U+FFFD.
 */
static size_t
escaped_fit(const char *s, size_t n, size_t max)
{
    size_t i = 0, used = 0;

    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t take = 1, cost = 1;

        if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t') {
            cost = 2;
        } else if (c < 0x20 || c == 0x7f) {
            cost = 6;
        } else if (c >= 0x80) {
            size_t want = util_utf8_len(c);
            size_t ok = util_utf8_valid((const unsigned char *)s + i,
                                        n - i < 4 ? n - i : 4);

            if (want == 0 || ok < want)
                cost = 3;
            else
                take = cost = want;
        }
        if (used + cost > max)
            break;
        used += cost;
        i += take;
    }
    return i;
}

/* Pushes key as the log writes a key: [A-Za-z0-9_.-], '_' for the rest. */
static void
push_plain_name(lua_State *L, const char *k, size_t n)
{
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                    c == '-';

        luaL_addchar(&b, plain ? c : '_');
    }
    if (n == 0)
        luaL_addchar(&b, '_');      /* "=v" would not parse as logfmt */
    luaL_pushresult(&b);
}

struct field_key {
    const char *s;
    size_t n;
};

static int
field_key_cmp(const void *a, const void *b)
{
    const struct field_key *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);

    return c != 0 ? c : (x->n > y->n) - (x->n < y->n);
}

/*
 * Pushes the fields table at idx as a sequence name, text, name, text ...
 * in byte order of the keys.  Values are turned to text first, since
 * __tostring may raise and a line once begun should be written whole.
 * A name the daemon writes itself, or one an earlier field took (two
 * keys may reduce to one name), gets "field." in front until it is
 * free, so every key appears once in a line.
 */
static void
push_fields(lua_State *L, int idx)
{
    int texts, used, count = 0;
    bool more;
    struct field_key *keys;

    luaL_checkstack(L, 8, "log fields");
    lua_newtable(L);                            /* texts: key -> text */
    texts = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {             /* key value */
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "log fields must have string keys");
        /* Numbers and booleans stay themselves: JSON logs keep their
         * type (see write_line). */
        if (lua_type(L, -1) == LUA_TNUMBER || lua_type(L, -1) == LUA_TBOOLEAN)
            lua_pushvalue(L, -1);
        else
            luaL_tolstring(L, -1, NULL);        /* key value text */
        lua_pushvalue(L, -3);
        lua_insert(L, -2);                      /* key value key text */
        lua_rawset(L, texts);                   /* key value */
        lua_pop(L, 1);
        count++;
    }
    keys = lua_newuserdatauv(L, (size_t)count * sizeof(*keys) + 1, 0);
    count = 0;
    lua_pushnil(L);
    while (lua_next(L, texts) != 0) {           /* keys k text */
        lua_pop(L, 1);
        /* The string is held as a key of texts. */
        keys[count].s = lua_tolstring(L, -1, &keys[count].n);
        count++;
    }
    qsort(keys, (size_t)count, sizeof(*keys), field_key_cmp);
    more = count > LIB_LOG_FIELDS_MAX;
    if (more)
        count = LIB_LOG_FIELDS_MAX;
    lua_newtable(L);                            /* used: name -> true */
    used = lua_gettop(L);
    for (int i = 0; own_names[i] != NULL; i++) {
        lua_pushboolean(L, 1);
        lua_setfield(L, used, own_names[i]);
    }
    lua_createtable(L, count * 2, 0);           /* out */
    for (int i = 0; i < count; i++) {
        push_plain_name(L, keys[i].s, keys[i].n);       /* out name */
        for (;;) {
            lua_pushvalue(L, -1);
            if (lua_rawget(L, used) == LUA_TNIL)        /* out name nil */
                break;
            lua_pop(L, 1);
            lua_pushliteral(L, "field.");
            lua_insert(L, -2);
            lua_concat(L, 2);                   /* out field.name */
        }
        lua_pop(L, 1);                                  /* out name */
        lua_pushvalue(L, -1);
        lua_pushboolean(L, 1);
        lua_rawset(L, used);
        lua_rawseti(L, -2, 2 * i + 1);
        lua_pushlstring(L, keys[i].s, keys[i].n);
        lua_rawget(L, texts);
        lua_rawseti(L, -2, 2 * i + 2);
    }
    if (more) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "more");    /* fields were left out */
    }
    lua_replace(L, texts);                      /* out keys used */
    lua_settop(L, texts);                       /* out */
}

/*
 * The value on top as a field: integers, finite floats and booleans as
 * bare tokens (numbers in JSON logs), anything else as text.
 */
static void
write_value(lua_State *L, struct log_line *line, const char *name)
{
    char tmp[40];
    const char *t;
    size_t tn;
    int n;

    if (lua_isboolean(L, -1)) {
        if (lua_toboolean(L, -1))
            log_bare(line, name, "true", 4);
        else
            log_bare(line, name, "false", 5);
        return;
    }
    if (lua_isinteger(L, -1)) {
        log_int(line, name, (long long)lua_tointeger(L, -1));
        return;
    }
    if (lua_type(L, -1) == LUA_TNUMBER && isfinite(lua_tonumber(L, -1))) {
        /* As tostring writes it, short of its ".0". */
        n = snprintf(tmp, sizeof(tmp), "%.14g", (double)lua_tonumber(L, -1));
        log_bare(line, name, tmp, (size_t)n);
        return;
    }
    /* Text, and inf and nan, which are no JSON numbers ("inf", "nan"). */
    t = lua_tolstring(L, -1, &tn);
    log_strn(line, name, t, tn);
}

/*
 * Writes one line: the message at msg_idx (text), the fields prepared by
 * push_fields at fields_idx (or nil there), and the event's ids.
 */
static void
write_line(lua_State *L, enum log_level level, int msg_idx, int fields_idx)
{
    const char *msg = lua_tostring(L, msg_idx);
    size_t n = strlen(msg), fit;
    const struct spool_event *ev;
    struct log_line line;

    fit = escaped_fit(msg, n, LIB_LOG_MSG_MAX - 3);
    if (fit < n) {
        lua_pushlstring(L, msg, fit);
        lua_pushliteral(L, "...");
        lua_concat(L, 2);
        msg = lua_tostring(L, -1);      /* held until the function returns */
    }
    log_begin(&line, level, msg);
    ev = lrt_current(L);
    if (ev != NULL) {
        log_int(&line, "spool_id", (long long)ev->id);
        log_int(&line, "attempt", ev->attempts + 1);
    }
    if (lua_istable(L, fields_idx)) {
        lua_Integer count = (lua_Integer)lua_rawlen(L, fields_idx);

        for (lua_Integer i = 1; i < count; i += 2) {
            const char *name;

            lua_rawgeti(L, fields_idx, i);
            lua_rawgeti(L, fields_idx, i + 1);
            name = lua_tostring(L, -2);
            write_value(L, &line, name);
            lua_pop(L, 2);
        }
        if (lua_getfield(L, fields_idx, "more") == LUA_TBOOLEAN)
            log_truncated(&line);
        lua_pop(L, 1);
    }
    log_end(&line);
}

/* grwhd.log.<level>(msg [, fields]) */
static int
l_log(lua_State *L, enum log_level level)
{
    luaL_checkstring(L, 1);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    if (!log_enabled(level))
        return 0;
    lua_settop(L, 2);
    if (lua_istable(L, 2))
        push_fields(L, 2);                      /* msg fields out */
    else
        lua_pushnil(L);
    write_line(L, level, 1, 3);
    return 0;
}

int
lib_print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_Buffer b;

    if (!log_enabled(LOG_INFO))
        return 0;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);                        /* args... msg */
    lua_pushnil(L);                             /* no fields */
    write_line(L, LOG_INFO, n + 1, n + 2);
    return 0;
}

static int l_log_debug(lua_State *L) { return l_log(L, LOG_DEBUG); }
static int l_log_info(lua_State *L) { return l_log(L, LOG_INFO); }
static int l_log_warn(lua_State *L) { return l_log(L, LOG_WARN); }
static int l_log_error(lua_State *L) { return l_log(L, LOG_ERROR); }

static int
l_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    convert_encode(L, 1);
    return 1;
}

static int
l_json_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);

    convert_decode(L, s, n);
    return 1;
}

static int
l_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)util_now());
    return 1;
}

static const luaL_Reg log_funcs[] = {
    {"debug", l_log_debug},
    {"info", l_log_info},
    {"warn", l_log_warn},
    {"error", l_log_error},
    {NULL, NULL},
};

static const luaL_Reg http_funcs[] = {
    {"request", l_http_request},
    {NULL, NULL},
};

static const luaL_Reg json_funcs[] = {
    {"encode", l_json_encode},
    {"decode", l_json_decode},
    {NULL, NULL},
};

int
lib_open(lua_State *L)
{
    convert_init(L);
    http_init(L);
    lua_newtable(L);                    /* grwhd */
    luaL_newlib(L, log_funcs);
    lua_setfield(L, -2, "log");
    luaL_newlib(L, json_funcs);
    lua_setfield(L, -2, "json");
    luaL_newlib(L, http_funcs);
    lua_setfield(L, -2, "http");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, l_now);
    lua_setfield(L, -2, "now");
    lua_pushliteral(L, GRWHD_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
