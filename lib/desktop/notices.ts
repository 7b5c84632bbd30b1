// What the person at the machine is told (lib/desktop/notifier.ts shows it): while a
// start waits longer than a moment, what it waits for, what moves, how much and when it
// ends, updated, and when it is done; after a stop, whether the session's work is on
// the NAS, so that another machine can take the VM. Timing over injected timers, text
// from pure functions.
import { formatBytes, formatDuration, formatProgress, type ProgressReport } from '../progress.js';
import type { KeptWhy } from '../sync/stop.js';
import type { Notice, Notifier } from './notifier.js';

/** A start shorter than this tells nobody. */
export const START_NOTICE_DELAY_MS = 3000;
/** How often a waiting start's notification is updated, at most. */
const UPDATE_EVERY_MS = 2000;

export interface StartNotices {
  /** What the start waits for now, in words ("fetching the newest state from the NAS"). */
  waitingFor(what: string): void;
  /** One transfer's progress; its label says what moves ("pull vda 3f2a…"). */
  progress(label: string, report: ProgressReport): void;
  /** The start's work is over: it goes on to boot the VM, or (an error) it was refused. */
  finish(error?: unknown): void;
}

export interface Timers {
  now: () => number;
  setTimeout: (run: () => void, ms: number) => { unref?: () => unknown };
  clearTimeout: (timer: ReturnType<Timers['setTimeout']>) => void;
}

const REAL_TIMERS: Timers = {
  now: Date.now,
  setTimeout: (run, ms) => setTimeout(run, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout),
};

/** The notices of one start of `domain`: nothing unless it is still waiting after START_NOTICE_DELAY_MS. */
export function startNotices(domain: string, notifier: Notifier, timers: Timers = REAL_TIMERS): StartNotices {
  const began = timers.now();
  let waitingFor = 'asking the NAS';
  let transfer: string | undefined;
  const moved = new Map<string, number>(); // bytes done, by transfer
  let shown = false;
  let lastShown = -Infinity;
  let update: ReturnType<Timers['setTimeout']> | undefined;
  let over = false;

  const show = () => {
    update = undefined;
    if (over) return;
    shown = true;
    lastShown = timers.now();
    notifier.show({ summary: `Starting ${domain}: waiting`, body: [waitingFor, transfer].filter((line) => line !== undefined).join('\n'), urgency: 'low' });
  };
  const changed = () => {
    if (!shown || update !== undefined || over) return;
    const wait = lastShown + UPDATE_EVERY_MS - timers.now();
    if (wait <= 0) return show();
    update = timers.setTimeout(show, wait);
    update.unref?.();
  };
  const first = timers.setTimeout(show, START_NOTICE_DELAY_MS);
  first.unref?.(); // never keeps the hook from ending

  return {
    waitingFor(what) {
      waitingFor = what;
      transfer = undefined;
      changed();
    },
    progress(label, report) {
      moved.set(label, report.done);
      transfer = `${label}: ${formatProgress(report)}`;
      changed();
    },
    finish(error) {
      over = true;
      timers.clearTimeout(first);
      if (update !== undefined) timers.clearTimeout(update);
      if (!shown) return;
      const bytes = [...moved.values()].reduce((sum, done) => sum + done, 0);
      const took = `after ${formatDuration((timers.now() - began) / 1000)}${bytes > 0 ? `, ${formatBytes(bytes)} moved` : ''}`;
      const notice: Notice =
        error === undefined
          ? { summary: `${domain} is starting`, body: `in step with the NAS ${took}` }
          : { summary: `${domain} did not start`, body: `${error instanceof Error ? error.message : String(error)} (${took})`, urgency: 'critical' };
      notifier.show(notice, { final: true });
    },
  };
}

/** After a stop's work: whether another machine can take the VM now; undefined when there is nothing to tell (the push was skipped, as asked). */
export function stopNotice(domain: string, outcome: string, kept: KeptWhy | undefined): Notice | undefined {
  switch (kept) {
    case undefined:
      return {
        summary: 'work is on the NAS: safe to switch machines',
        body: `${domain}: ${outcome === 'pushed' ? 'this session is on the NAS' : 'the NAS already had this session'}; another machine can start it now.`,
      };
    case 'no-push':
      return undefined;
    case 'offline':
      return {
        summary: `${domain}: work is only on this machine`,
        body: `The NAS could not be reached. Keep this machine on: the next start here pushes it, or run kss push ${domain} once the NAS is back.`,
        urgency: 'critical',
      };
    case 'conflict':
      return {
        summary: `${domain}: work is only on this machine`,
        body: `Another machine pushed ${domain} meanwhile: choose which side wins with kss resolve ${domain} (the other is kept).`,
        urgency: 'critical',
      };
    case 'lease-held-elsewhere':
      return {
        summary: `${domain}: work is only on this machine`,
        body: `Another machine holds ${domain}: shut it down there, then run kss push ${domain} here.`,
        urgency: 'critical',
      };
  }
}

/** After a stop's work failed (the NAS went away during the push, a tool failed): the work is still here. */
export function failedStopNotice(domain: string, error: unknown): Notice {
  return {
    summary: `${domain}: work is only on this machine`,
    body: `The work after its stop failed: ${error instanceof Error ? error.message : String(error)}. Keep this machine on: the next start here pushes it, or run kss push ${domain} (kss log ${domain} says more).`,
    urgency: 'critical',
  };
}
