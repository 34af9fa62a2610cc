/* runtime.h - one worker's Lua state: load, handler lookup, safe calls. */
#ifndef GRWHD_RUNTIME_H
#define GRWHD_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "../core/spool.h"
#include "../core/util.h"

struct lrt_conf {
    const char *script;         /* path of the handler script */
    double handler_timeout;     /* seconds a handler may run; 0 = none */
    size_t memory_limit;        /* bytes one state may hold; 0 = none */
};

struct lrt;

/*
 * Builds a state: standard libraries, the grwhd module, the script run
 * once, its handlers found, init() called.  NULL with a message (with
 * file:line where the script is at fault) when any step fails.
 */
struct lrt *lrt_new(const struct lrt_conf *conf, int worker,
                    struct gerr *err);
/* Calls close() if the script has one, then drops the state. */
void lrt_free(struct lrt *rt);

/*
 * Runs the handler for ev (its type's function, else default).  Returns 0
 * when it returned, 1 when no function takes the type (also a success),
 * or -1 with the error and traceback in err.
 */
int lrt_call(struct lrt *rt, const struct spool_event *ev, struct gerr *err);

/*
 * True once the state ran out of its memory bound: the caller should
 * build a new one, since the old may hold what filled it.
 */
bool lrt_spent(const struct lrt *rt);

/*
 * Calls fn with the name of every entry of the script's handler table:
 * other is NULL for a function (a type it handles), else the Lua type of
 * what is there instead (a mistake: those events go to default).
 */
void lrt_types(struct lrt *rt,
               void (*fn)(void *arg, const char *name, const char *other),
               void *arg);

/*
 * Seconds left of the running handler's time: 0 or less once it is
 * spent, HUGE_VAL when no deadline applies.
 */
double lrt_time_left(lua_State *L);

/*
 * For C functions that block: when the deadline has passed, the timeout
 * is raised at the script's next instruction rather than at the next
 * periodic look at the clock.
 */
void lrt_deadline_check(lua_State *L);

/* The event being handled on L's state (NULL outside a handler). */
const struct spool_event *lrt_current(lua_State *L);

/*
 * Calls the function below nargs arguments in protected mode with a
 * traceback.  On error returns -1 with the message in err, stack popped.
 */
int lrt_pcall(lua_State *L, int nargs, int nresults, struct gerr *err);

#endif
