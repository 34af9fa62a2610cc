/* runtime.c - one worker's Lua state: load, handler lookup, safe calls. */
#include "runtime.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../core/log.h"
#include "convert.h"
#include "lib.h"

/* Instructions between two looks at the clock while a handler runs. */
#define LRT_HOOK_COUNT 10000

struct lrt {
    lua_State *L;
    struct lrt_conf conf;
    int worker;
    size_t mem_used;
    double deadline;            /* monotonic; 0 when no call is running */
    bool timed_out;
    bool spent;             /* an allocation was refused by the bound */
    int handlers;               /* registry ref of the handler table */
    const struct spool_event *cur;
};

static struct lrt *
rt_of(lua_State *L)
{
    return *(struct lrt **)lua_getextraspace(L);
}

const struct spool_event *
lrt_current(lua_State *L)
{
    struct lrt *rt = rt_of(L);

    return rt ? rt->cur : NULL;
}

double
lrt_time_left(lua_State *L)
{
    struct lrt *rt = rt_of(L);

    if (rt == NULL || rt->deadline <= 0)
        return HUGE_VAL;
    return rt->deadline - util_mono();
}

/* Counts every byte a state holds; growth past the limit fails. */
static void *
rt_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct lrt *rt = ud;
    void *p;

    if (ptr == NULL)
        osize = 0;      /* then osize only tells the kind of object */
    if (nsize == 0) {
        free(ptr);
        rt->mem_used -= osize;
        return NULL;
    }
    if (rt->conf.memory_limit > 0 && nsize > osize &&
        rt->mem_used + (nsize - osize) > rt->conf.memory_limit) {
        rt->spent = true;
        return NULL;
    }
    p = realloc(ptr, nsize);
    if (p == NULL)
        return NULL;
    rt->mem_used = rt->mem_used - osize + nsize;
    return p;
}

static int
timeout_tostring(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    return 1;
}

/*
 * Once past the deadline the hook fires on every instruction and raises
 * each time, so a pcall inside the script cannot absorb the timeout.
 * XXX(blocking-c): a call blocked in C (os.execute, io.read on a pipe)
 * runs no instructions, so it is not cut short; it ends when it returns.
 */
static void
rt_hook(lua_State *L, lua_Debug *ar)
{
    struct lrt *rt = rt_of(L);

    (void)ar;
    if (rt->deadline <= 0 || util_mono() < rt->deadline)
        return;
    if (!rt->timed_out) {
        char msg[64];

        rt->timed_out = true;
        /*
         * A table with __tostring rather than a string: coroutine.wrap
         * and error() prefix a position to string errors only, and the
         * message should read the same wherever the deadline struck.
         */
        snprintf(msg, sizeof(msg), "handler timed out after %g s",
                 rt->conf.handler_timeout);
        lua_createtable(L, 0, 0);
        lua_createtable(L, 0, 1);
        lua_pushstring(L, msg);
        lua_pushcclosure(L, timeout_tostring, 1);
        lua_setfield(L, -2, "__tostring");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, "grwhd.timeout");
    }
    /* Every thread, coroutines too, raises at its next instruction. */
    lua_sethook(L, rt_hook, LUA_MASKCOUNT, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, "grwhd.timeout");
    lua_error(L);
}

void
lrt_deadline_check(lua_State *L)
{
    struct lrt *rt = rt_of(L);

    /* The hook at the next instruction raises the timeout as usual. */
    if (rt != NULL && rt->deadline > 0 && util_mono() >= rt->deadline)
        lua_sethook(L, rt_hook, LUA_MASKCOUNT, 1);
}

static int
l_no_exit(lua_State *L)
{
    return luaL_error(L, "os.exit is disabled in grwhd: raise an error to "
                         "fail the event, or stop the daemon with SIGTERM");
}

static int
msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);

    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") &&
            lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)",
                                  luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int
lrt_pcall(lua_State *L, int nargs, int nresults, struct gerr *err)
{
    int base = lua_gettop(L) - nargs;
    int status;

    lua_pushcfunction(L, msgh);
    lua_insert(L, base);
    status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    if (status != LUA_OK) {
        const char *m = lua_tostring(L, -1);

        gerr_set(err, "%s", m ? m : "(error without a message)");
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

/* Names of the globals a fresh state has: these are never handlers. */
static void
snapshot_globals(lua_State *L)
{
    lua_newtable(L);                            /* snap */
    lua_pushglobaltable(L);                     /* snap G */
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {              /* snap G k v */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushboolean(L, 1);
        lua_rawset(L, -5);                      /* snap G k */
    }
    lua_pop(L, 1);                              /* snap */
}

/*
 * Stack: snap result.  Leaves the handler table: the script's returned
 * table, or else its own global functions.
 */
static int
l_pick_handlers(lua_State *L)
{
    if (lua_istable(L, 2))
        return 1;
    if (!lua_isnil(L, 2))
        return luaL_error(L, "the script returned a %s; return a table of "
                          "handlers, or nothing to use global functions",
                          luaL_typename(L, 2));
    lua_newtable(L);                            /* snap nil H */
    lua_pushglobaltable(L);                     /* snap nil H G */
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {              /* ... H G k v */
        if (lua_type(L, -2) == LUA_TSTRING && lua_isfunction(L, -1)) {
            lua_pushvalue(L, -2);
            if (lua_rawget(L, 1) == LUA_TNIL) { /* ... k v seen */
                lua_pop(L, 1);
                lua_pushvalue(L, -2);
                lua_pushvalue(L, -2);
                lua_rawset(L, -6);              /* H[k] = v */
            } else {
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);                              /* snap nil H */
    return 1;
}

/* Runs handlers.<name>() (or the global) if there is one. */
static int
call_hook_fn(struct lrt *rt, const char *name, struct gerr *err)
{
    lua_State *L = rt->L;

    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->handlers);
    if (lua_getfield(L, -1, name) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        if (lua_getglobal(L, name) != LUA_TFUNCTION) {
            lua_pop(L, 2);
            return 0;
        }
    }
    lua_remove(L, -2);
    return lrt_pcall(L, 0, 0, err);
}

static void
set_package_path(lua_State *L, const char *script)
{
    const char *slash = strrchr(script, '/');
    size_t dirlen = slash ? (size_t)(slash - script) : 1;
    const char *dir = slash ? script : ".";

    lua_getglobal(L, "package");                /* package */
    lua_pushlstring(L, dir, dirlen);
    lua_pushliteral(L, "/?.lua;");
    lua_pushlstring(L, dir, dirlen);
    lua_pushliteral(L, "/?/init.lua;");
    lua_getfield(L, -5, "path");
    lua_concat(L, 5);                           /* package newpath */
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

struct lrt *
lrt_new(const struct lrt_conf *conf, int worker, struct gerr *err)
{
    struct lrt *rt = xcalloc(1, sizeof(*rt));
    lua_State *L;

    rt->conf = *conf;
    rt->worker = worker;
    rt->handlers = LUA_NOREF;
    L = rt->L = lua_newstate(rt_alloc, rt);
    if (L == NULL) {
        gerr_set(err, "cannot create a Lua state");
        free(rt);
        return NULL;
    }
    *(struct lrt **)lua_getextraspace(L) = rt;
    lua_gc(L, LUA_GCGEN, 0, 0);
    /*
     * The hook is set before anything runs, so every coroutine (each
     * inherits its creator's hook) is bound by the handler's deadline.
     */
    lua_sethook(L, rt_hook, LUA_MASKCOUNT, LRT_HOOK_COUNT);
    luaL_openlibs(L);
    /* os.exit would end the daemon from inside a handler, and a restart
     * would run the same event into it again. */
    lua_getglobal(L, "os");
    lua_pushcfunction(L, l_no_exit);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
    /* print would write to stdout, past the log and its format. */
    lua_pushcfunction(L, lib_print);
    lua_setglobal(L, "print");
    luaL_requiref(L, "grwhd", lib_open, 1);
    lua_pop(L, 1);
    set_package_path(L, conf->script);

    /* Loading and init() get the same time as a handler. */
    if (conf->handler_timeout > 0)
        rt->deadline = util_mono() + conf->handler_timeout;
    snapshot_globals(L);                                /* snap */
    if (luaL_loadfilex(L, conf->script, "t") != LUA_OK) {
        gerr_set(err, "%s", lua_tostring(L, -1));
        goto fail;
    }
    if (lrt_pcall(L, 0, 1, err) != 0)                   /* snap result */
        goto fail;
    lua_pushcfunction(L, l_pick_handlers);
    lua_insert(L, 1);                                   /* pick snap res */
    /* Its errors are about the script's result: no traceback to add. */
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {              /* handlers */
        gerr_set(err, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1)
                                                  : "cannot pick handlers");
        goto fail;
    }
    rt->handlers = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    if (call_hook_fn(rt, "init", err) != 0)
        goto fail;
    rt->deadline = 0;
    lua_sethook(L, rt_hook, LUA_MASKCOUNT, LRT_HOOK_COUNT);
    return rt;
fail:
    lua_close(L);
    free(rt);
    return NULL;
}

void
lrt_free(struct lrt *rt)
{
    struct gerr err;

    if (rt == NULL)
        return;
    if (rt->handlers != LUA_NOREF && call_hook_fn(rt, "close", &err) != 0)
        log_msg_str(LOG_WARN, "close() failed", "error", err.msg);
    lua_close(rt->L);
    free(rt);
}

static void
push_meta(lua_State *L, const struct spool_event *ev)
{
    lua_createtable(L, 0, 9);
    lua_pushinteger(L, (lua_Integer)ev->id);
    lua_setfield(L, -2, "id");
    lua_pushinteger(L, ev->attempts + 1);
    lua_setfield(L, -2, "attempt");
    lua_pushnumber(L, (lua_Number)ev->received_at);
    lua_setfield(L, -2, "received_at");
    lua_pushstring(L, ev->type ? ev->type : "");
    lua_setfield(L, -2, "type");
    lua_pushstring(L, ev->webhook_id);          /* NULL pushes nil */
    lua_setfield(L, -2, "webhook_id");
    lua_pushstring(L, ev->request_id);
    lua_setfield(L, -2, "request_id");
    lua_pushstring(L, ev->remote_addr);
    lua_setfield(L, -2, "remote_addr");
    /* 1-based, as everything else a Lua script indexes. */
    lua_pushinteger(L, ev->batch_index + 1);
    lua_setfield(L, -2, "batch_index");
    lua_pushinteger(L, ev->batch_size);
    lua_setfield(L, -2, "batch_size");
}

static bool
reserved_name(const char *type)
{
    return strcmp(type, "init") == 0 || strcmp(type, "close") == 0;
}

/* Protected body of lrt_call: args rt, ev (light userdata). */
static int
l_run_event(lua_State *L)
{
    struct lrt *rt = lua_touserdata(L, 1);
    const struct spool_event *ev = lua_touserdata(L, 2);
    const char *type = ev->type ? ev->type : "";

    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->handlers);    /* H */
    if (type[0] == '\0' || reserved_name(type) ||
        lua_getfield(L, 1, type) != LUA_TFUNCTION) {
        lua_settop(L, 1);
        if (lua_getfield(L, 1, "default") != LUA_TFUNCTION) {
            lua_pushboolean(L, 0);      /* nothing handles this type */
            return 1;
        }
    }                                                   /* H fn */
    convert_decode(L, ev->json, ev->len);               /* H fn ev */
    push_meta(L, ev);                                   /* H fn ev meta */
    lua_call(L, 2, 0);
    lua_pushboolean(L, 1);
    return 1;
}

int
lrt_call(struct lrt *rt, const struct spool_event *ev, struct gerr *err)
{
    lua_State *L = rt->L;
    int top = lua_gettop(L), rc;

    rt->cur = ev;
    rt->timed_out = false;
    if (rt->conf.handler_timeout > 0)
        rt->deadline = util_mono() + rt->conf.handler_timeout;
    lua_pushcfunction(L, l_run_event);
    lua_pushlightuserdata(L, rt);
    lua_pushlightuserdata(L, (void *)ev);
    rc = lrt_pcall(L, 2, 1, err);
    if (rc == 0 && !lua_toboolean(L, -1))
        rc = 1;
    rt->deadline = 0;
    /* Back to the usual rate, whether the deadline struck or a blocking
     * call only armed the hook (lrt_deadline_check) and it never ran. */
    lua_sethook(L, rt_hook, LUA_MASKCOUNT, LRT_HOOK_COUNT);
    rt->cur = NULL;
    lua_settop(L, top);
    return rc;
}

bool
lrt_spent(const struct lrt *rt)
{
    return rt->spent;
}

void
lrt_types(struct lrt *rt,
          void (*fn)(void *arg, const char *name, const char *other),
          void *arg)
{
    lua_State *L = rt->L;

    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->handlers);
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING &&
            !reserved_name(lua_tostring(L, -2)))
            fn(arg, lua_tostring(L, -2),
               lua_isfunction(L, -1) ? NULL : luaL_typename(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}
