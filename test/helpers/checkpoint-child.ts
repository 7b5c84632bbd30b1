// The checkpoint process of a session (lib/checkpoint/daemon.ts), run by a test inside a
// simulated host, killed (SIGKILL: a power cut of the process) just before it reaches
// step KILL_AT for the Nth time (`step#N`; N 1 by default; none: it runs until its VM
// stops). Every CHECKPOINT_SECONDS; it tells each step on stderr.
import { readConfig } from '../../lib/config.js';
import { Logger, streamSink } from '../../lib/log.js';
import { openRepository } from '../../lib/nas/open.js';
import { runCheckpoints } from '../../lib/checkpoint/daemon.js';

const [domain, session, killAt = ''] = process.argv.slice(2) as [string, string, string | undefined];
const [killStep, killTime = '1'] = killAt.split('#');
let seen = 0;
const config = { ...(await readConfig('/etc/kvm-snapshot-sync/config.json')), checkpointSeconds: Number(process.env.CHECKPOINT_SECONDS ?? '1') };
const log = new Logger([streamSink(process.stderr, 'info')]).with({ domain, child: process.pid });
await runCheckpoints(domain, session, {
  config,
  log,
  openRepository: () => openRepository(config, log),
  uri: 'qemu:///system',
  onStep: (step) => {
    process.stderr.write(`step ${step}\n`);
    if (step === killStep && (seen += 1) === Number(killTime)) process.kill(process.pid, 'SIGKILL');
  },
});
