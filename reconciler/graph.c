/*
 * graph.c — `ferry-reconcile graph FILE`: a saga definition as a Graphviz
 * digraph, so that a user can look at the flow instead of reading YAML.
 *
 * Forward, left to right: start, the steps in order (action type, topic,
 * timeout and attempts), completed. Below each step that has one, its
 * compensation. Two ways back, as ferry_saga_step takes them: a step that
 * times out (no answer after its attempts: it may have run) leads to its
 * own compensation (the participant turns an undo of something it never
 * did into a recorded no-op) or, without one, to the previous step's; a
 * step that is refused did not run, so it leads past its own compensation
 * to the previous step's. Where both lead to the same place, one edge says
 * both. The compensations chain back in reverse order to "compensated".
 * The pivot is a double octagon: from it on there is no way back, so its
 * successors have no failure edges (they are retried until they succeed);
 * a pivot without a compensation turns back only when it is refused, as
 * an unanswered one is resent.
 *
 * Layout: the failure edges' labels are xlabels, placed after the layout
 * beside their edges (a label on an edge between two nodes of one rank
 * sits across the edge); the title has the nodes' font.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "reconcile.h"
#include "yaml_walk.h"

/* s as the inside of a DOT string: quotes and backslashes escaped. */
static void put_escaped(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', out);
        if (*s == '\n')
            fputs("\\n", out);
        else
            fputc(*s, out);
    }
}

/* The compensation a failure of step i leads to: c<k> for the nearest
 * k <= i (own first) with one, else "compensated". */
static void failure_target(const ferry_saga_def *def, size_t i, char *buf, size_t len)
{
    for (size_t k = i + 1; k-- > 0;) {
        if (def->steps[k].has_compensation) {
            snprintf(buf, len, "c%zu", k);
            return;
        }
    }
    snprintf(buf, len, "compensated");
}

static void print_graph(FILE *out, const ferry_saga_def *def)
{
    char a[32], b[32];
    fputs("digraph \"", out);
    put_escaped(out, def->name);
    fputs("\" {\n", out);
    fprintf(out, "    label=\"saga %s version %d, deadline %s, hash %s\";\n    labelloc=t;\n",
            def->name, def->version, ferry__yw_format_duration(def->deadline_ms, a, sizeof a),
            def->hash);
    fputs("    rankdir=LR;\n"
          "    fontname=\"Helvetica\";\n"
          "    fontsize=12;\n"
          "    forcelabels=true;\n"
          "    node [shape=box, style=rounded, fontname=\"Helvetica\", fontsize=10];\n"
          "    edge [fontname=\"Helvetica\", fontsize=9];\n"
          "    start [shape=circle, label=\"start\"];\n"
          "    completed [shape=doublecircle, label=\"completed\"];\n"
          "    compensated [shape=doublecircle, label=\"compensated\", color=firebrick];\n",
          out);

    for (size_t i = 0; i < def->step_count; i++) {
        const ferry_saga_step_def *s = &def->steps[i];
        fprintf(out, "    s%zu [", i);
        if (s->pivot)
            fputs("shape=doubleoctagon, style=\"bold\", ", out);
        fputs("label=\"", out);
        put_escaped(out, s->name);
        if (s->pivot)
            fputs(" (pivot)", out);
        fputs("\\n", out);
        put_escaped(out, s->action.type);
        fprintf(out, " -> %s\\ntimeout %s", s->topic,
                ferry__yw_format_duration(s->timeout_ms, a, sizeof a));
        if (s->retry.attempts > 1)
            fprintf(out, " x %d, backoff %s", s->retry.attempts,
                    ferry__yw_format_duration(s->retry.backoff_ms, b, sizeof b));
        fputs("\"];\n", out);
        if (s->has_compensation) {
            fprintf(out, "    c%zu [style=\"rounded,dashed\", color=firebrick, label=\"undo ", i);
            put_escaped(out, s->name);
            fputs("\\n", out);
            put_escaped(out, s->compensation.type);
            fprintf(out, " -> %s\"];\n", s->topic);
            fprintf(out, "    { rank=same; s%zu; c%zu; }\n", i, i);
        }
    }

    /* Forward. */
    fputs("    start -> s0;\n", out);
    for (size_t i = 0; i + 1 < def->step_count; i++)
        fprintf(out, "    s%zu -> s%zu [label=\"ok\"];\n", i, i + 1);
    fprintf(out, "    s%zu -> completed [label=\"ok\"];\n", def->step_count - 1);

    /* Failures, up to and including the pivot. */
    size_t last = def->pivot_index >= 0 ? (size_t)def->pivot_index : def->step_count - 1;
    for (size_t i = 0; i <= last; i++) {
        char timed_out[32], refused[32];
        failure_target(def, i, timed_out, sizeof timed_out);
        if (i == 0)
            snprintf(refused, sizeof refused, "compensated");
        else
            failure_target(def, i - 1, refused, sizeof refused);
        /* A pivot with nothing to undo is resent until it is answered
         * (ferry_saga_step): only a refusal turns the saga back. */
        int resent = def->steps[i].pivot && !def->steps[i].has_compensation;
        if (!resent && strcmp(timed_out, refused) == 0) {
            fprintf(out, "    s%zu -> %s [xlabel=\"refused or times out\", style=dashed, "
                    "color=firebrick];\n", i, refused);
            continue;
        }
        if (!resent)
            fprintf(out, "    s%zu -> %s [xlabel=\"times out\", style=dashed, color=firebrick];\n",
                    i, timed_out);
        fprintf(out, "    s%zu -> %s [xlabel=\"refused\", style=dashed, color=firebrick];\n", i,
                refused);
    }

    /* Compensations, in reverse. */
    for (size_t i = def->step_count; i-- > 0;) {
        if (!def->steps[i].has_compensation)
            continue;
        char target[32];
        if (i == 0)
            snprintf(target, sizeof target, "compensated");
        else
            failure_target(def, i - 1, target, sizeof target);
        fprintf(out, "    c%zu -> %s [style=dashed, color=firebrick];\n", i, target);
    }
    fputs("}\n", out);
}

static void graph_usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-reconcile graph FILE\n"
            "\n"
            "Print the saga definition FILE as a Graphviz digraph on stdout: its steps in\n"
            "order, their compensations in reverse, the pivot. Render it with\n"
            "`ferry-reconcile graph order.yaml | dot -Tsvg > order.svg`.\n"
            "\n"
            "  --help   this text\n"
            "\n"
            "Exit status: 0 printed, 4 the definition was refused (errors on stderr as\n"
            "FILE:LINE:COLUMN: FIELD: MESSAGE), 8 it could not be read, 16 usage error.\n");
}

int reconcile_graph(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        graph_usage(stdout);
        return fflush(stdout) == 0 ? RECONCILE_EXIT_OK : RECONCILE_EXIT_INVALID;
    }
    if (argc != 2 || (argv[1][0] == '-' && argv[1][1] != '\0')) {
        graph_usage(stderr);
        return RECONCILE_EXIT_USAGE;
    }
    ferry_saga_def *def = NULL;
    ferry_saga_load_errors errs;
    memset(&errs, 0, sizeof errs);
    char *text = NULL;
    size_t len = 0;
    bool unreadable = false;
    /* Read first, as lint does, so that a file that cannot be read at all
     * is 8, as lint says it, not 4 (refused). */
    ferry_code rc = ferry__yw_read_file(argv[1], FERRY_SAGA_FILE_MAX, "the saga definition",
                                       &text, &len, &unreadable, &errs);
    if (rc == FERRY_OK) {
        rc = ferry_saga_def_parse(text, len, argv[1], &def, &errs);
        free(text);
    }
    if (rc != FERRY_OK) {
        reconcile_print_errors(stderr, argv[1], &errs);
        return unreadable || rc == FERRY_ENOMEM ? RC_EXIT_ERROR : RECONCILE_EXIT_INVALID;
    }
    print_graph(stdout, def);
    ferry_saga_def_destroy(def);
    return fflush(stdout) == 0 ? RECONCILE_EXIT_OK : RECONCILE_EXIT_INVALID;
}
