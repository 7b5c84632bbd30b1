// Opens the NAS named by the configuration: the transport its location calls for, with
// the deadlines that keep every step from hanging, behind the repository.
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { DirTransport } from './dir-transport.js';
import { NasRepository } from './repository.js';
import { SshTransport } from './ssh-transport.js';
import type { NasTransport } from './transport.js';

/**
 * Deadlines, in one place (the stall deadline of streams is the configuration's
 * stallSeconds). A dead link is noticed within ALIVE_INTERVAL × ALIVE_COUNT.
 */
export const NAS_DEADLINES = {
  connectTimeoutSec: 10,
  aliveIntervalSec: 5,
  aliveCountMax: 3,
  opTimeoutMs: 30_000,
} as const;

/** The transport for the configured NAS. */
export function openTransport(config: Config): NasTransport {
  const { nas } = config;
  if (nas.kind === 'dir') {
    return new DirTransport({ root: nas.path, opTimeoutMs: NAS_DEADLINES.opTimeoutMs, stallTimeoutMs: config.stallSeconds * 1000 });
  }
  return new SshTransport({
    root: nas.path,
    compress: true,
    opTimeoutMs: NAS_DEADLINES.opTimeoutMs,
    stallTimeoutMs: config.stallSeconds * 1000,
    target: {
      user: nas.user,
      host: nas.host,
      port: nas.port,
      identity: config.sshIdentity,
      knownHosts: config.sshKnownHosts,
      connectTimeoutSec: NAS_DEADLINES.connectTimeoutSec,
      aliveIntervalSec: NAS_DEADLINES.aliveIntervalSec,
      aliveCountMax: NAS_DEADLINES.aliveCountMax,
    },
  });
}

/** The repository on the configured NAS. */
export function openRepository(config: Config, log?: Logger): NasRepository {
  return new NasRepository(openTransport(config), { host: config.host, log });
}
