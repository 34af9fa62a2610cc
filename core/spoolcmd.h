/* spoolcmd.h - `grwhd spool`: look into a spool and act on dead events. */
#ifndef GRWHD_SPOOLCMD_H
#define GRWHD_SPOOLCMD_H

#include "config.h"

/* Runs the spool command named by c->args; returns the exit status. */
int spoolcmd_run(const struct config *c);

#endif
