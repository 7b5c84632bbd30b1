// `kss view VM`: the VM's screen, wherever it runs now: here, or on the host that holds
// its lease (the NAS names it), through libvirt's URI of that host (`peers`). viewTarget
// and viewerCommand decide (pure); viewCommand asks libvirt and the NAS, and starts the viewer.
import { peerUri, readConfig, type Config } from '../config.js';
import { KssError, NasUnreachableError, ToolError, UsageError } from '../errors.js';
import type { Lease } from '../nas/format.js';
import { openRepository } from '../nas/open.js';
import { findOnPath, runAttached, runCommand, type Command } from '../runner.js';
import { libvirtUri, virshCommand } from '../virsh.js';
import type { CommandContext } from './lifecycle.js';
import { isRunningState, runsHere } from './libvirt-domain.js';

/** How long libvirt on the other host may take to say how the VM is (an SSH login included). */
const PEER_DEADLINE_MS = 30_000;

export const VIEWER_PACKAGE = 'virt-viewer';

/** Where the screen is: the host, and the libvirt URI that reaches the VM there. */
export interface ViewTarget {
  host: string;
  uri: string;
  here: boolean;
}

/**
 * Where to look at `domain`: here when it runs here; else on the host its lease names.
 * Throws when it runs nowhere, saying how to start it.
 */
export function viewTarget(domain: string, o: { config: Pick<Config, 'host' | 'peers'>; localUri: string; runsHere: boolean; lease: Lease | null }): ViewTarget {
  const here = o.config.host;
  if (o.runsHere) return { host: here, uri: o.localUri, here: true };
  if (o.lease === null) {
    throw new UsageError(`${domain} runs nowhere: it is shut off here and no host has it checked out`, { remedy: `kss start ${domain} starts it here` });
  }
  if (o.lease.host === here) {
    throw new UsageError(`${domain} is shut off here, and still checked out here (since ${o.lease.since}: it was stopped with --no-push)`, {
      remedy: `kss start ${domain} starts it here`,
    });
  }
  return { host: o.lease.host, uri: peerUri(o.config, o.lease.host), here: false };
}

/**
 * The viewer to run, of those installed: virt-viewer reaches the VM through libvirt
 * (over SSH to another host); remote-viewer only a display this host can reach, so it
 * serves a VM that runs here (`display` is what virsh domdisplay said).
 */
export function viewerCommand(domain: string, target: ViewTarget, installed: { virtViewer: boolean; remoteViewer: boolean }, display: string): Command {
  if (installed.virtViewer) return { file: 'virt-viewer', args: ['--connect', target.uri, '--reconnect', domain] };
  if (installed.remoteViewer && target.here) return { file: 'remote-viewer', args: [display] };
  throw noViewer(installed.remoteViewer ? `remote-viewer cannot reach a screen on ${target.host} by itself` : NONE_INSTALLED);
}

const NONE_INSTALLED = 'neither virt-viewer nor remote-viewer is installed';

/** The refusal when no viewer installed here can show the screen, and why not. */
function noViewer(why: string): ToolError {
  return new ToolError(`${why}: kss view needs virt-viewer`, 'virt-viewer', undefined, '', {
    remedy: `install the ${VIEWER_PACKAGE} package (apt-get install ${VIEWER_PACKAGE}; dnf install ${VIEWER_PACKAGE})`,
  });
}

/** Asks libvirt at `uri` one thing about the domain; a failure says which host did not answer and what to check. */
async function askLibvirt(target: ViewTarget, ...args: string[]): Promise<string> {
  try {
    return (await runCommand(virshCommand(target.uri, ...args), { timeoutMs: PEER_DEADLINE_MS })).stdout.trim();
  } catch (error) {
    if (!(error instanceof ToolError) || target.here) throw error;
    const said = error.stderrTail.trim().split('\n').at(-1) ?? '';
    throw new ToolError(`libvirt on ${target.host} did not answer at ${target.uri}${said === '' ? '' : `: ${said}`}`, error.command, error.status, error.stderrTail, {
      remedy: `check that virsh -c '${target.uri}' list works from here (an SSH key for ${target.host}, libvirt access there), or set its URI: kss config set peers.${target.host}=URI`,
    });
  }
}

/** `kss view VM` */
export async function viewCommand(o: { domain: string }, context: CommandContext): Promise<number> {
  const config = await readConfig(context.configFile);
  const installed = { virtViewer: (await findOnPath('virt-viewer', context.env.PATH)) !== undefined, remoteViewer: (await findOnPath('remote-viewer', context.env.PATH)) !== undefined };
  if (!installed.virtViewer && !installed.remoteViewer) throw noViewer(NONE_INSTALLED);

  const localUri = libvirtUri(context.env);
  const here = (await runsHere(o.domain, context.env, PEER_DEADLINE_MS)) === true;
  let lease: Lease | null = null;
  if (!here) {
    const repository = openRepository(config);
    try {
      lease = (await repository.readManifest(o.domain))?.lease ?? null;
    } catch (error) {
      if (!(error instanceof KssError)) throw error;
      throw new NasUnreachableError(`${o.domain} does not run here, and the NAS cannot say where it runs: ${error.message}`, {
        remedy: `check the network and the NAS; or connect to the host yourself: virt-viewer --connect ${peerUri(config, 'HOST')} ${o.domain}`,
        cause: error,
      });
    } finally {
      await repository.close();
    }
  }
  const target = viewTarget(o.domain, { config, localUri, runsHere: here, lease });
  if (!target.here) {
    const state = await askLibvirt(target, 'domstate', o.domain);
    if (!isRunningState(state)) {
      throw new UsageError(`${o.domain} is ${state} on ${target.host}, which still has it checked out (stopped there with --no-push?)`, {
        remedy: `start it there, or push it there (kss push ${o.domain} on ${target.host}) and start it here`,
      });
    }
  }
  const display = await askLibvirt(target, 'domdisplay', o.domain);
  if (display === '') {
    throw new UsageError(`${o.domain} has no screen to show (its definition has no graphical display)`, { remedy: 'add a Display (SPICE or VNC) to it in virt-manager, then start it again' });
  }
  const viewer = viewerCommand(o.domain, target, installed, display);
  context.stderr.write(`kss: ${o.domain} runs ${target.here ? 'here' : `on ${target.host}`}: ${viewer.file} ${viewer.args.join(' ')}\n`);
  return runAttached(viewer, context.env);
}

