/* lib.c - the grwhd module that scripts see. */
#include "lib.h"

#include <string.h>

#include <lauxlib.h>

#include "../core/log.h"
#include "../core/util.h"
#include "convert.h"
#include "http.h"
#include "runtime.h"

/* grwhd.log.<level>(msg [, fields]) */
static int
l_log(lua_State *L, enum log_level level)
{
    const char *msg = luaL_checkstring(L, 1);
    const struct spool_event *ev;
    struct log_line line;

    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    if (!log_enabled(level))
        return 0;
    /*
     * Field values are turned to text before the line starts, since
     * __tostring may raise; the strings stay on the stack until written.
     */
    lua_settop(L, 2);
    if (lua_istable(L, 2)) {
        lua_newtable(L);                        /* 3: key -> text */
        lua_pushnil(L);
        while (lua_next(L, 2) != 0) {           /* key value */
            if (lua_type(L, -2) != LUA_TSTRING)
                luaL_error(L, "log fields must have string keys");
            luaL_tolstring(L, -1, NULL);        /* key value text */
            lua_pushvalue(L, -3);               /* key value text key */
            lua_insert(L, -2);                  /* key value key text */
            lua_rawset(L, 3);                   /* key value */
            lua_pop(L, 1);                      /* key */
        }
    }
    log_begin(&line, level, msg);
    ev = lrt_current(L);
    if (ev != NULL) {
        log_int(&line, "spool_id", (long long)ev->id);
        log_int(&line, "attempt", ev->attempts + 1);
    }
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3) != 0) {
            log_str(&line, lua_tostring(L, -2), lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    log_end(&line);
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
