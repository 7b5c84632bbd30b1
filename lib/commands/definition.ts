// `kss definition VM [--json]`: the domain's definition as it travels (the portable part)
// and this host's own part, side by side, and whether the NAS has a newer one.
import { join } from 'node:path';
import { readConfig } from '../config.js';
import { serializeXml } from '../domain-xml.js';
import { Logger } from '../log.js';
import { openRepository } from '../nas/open.js';
import { describeHostPart, splitHere } from '../sync/definitions.js';
import { domainStateDir, readLocalState, type LocalState } from '../sync/local-state.js';
import type { CommandContext } from './lifecycle.js';
import { definitionXml } from './libvirt-domain.js';
import { printJson } from './output.js';

/** Where this host's definition stands against what it was last captured as or put in place from, and the NAS head's. */
type Standing = 'in-step' | 'changed-here' | 'behind' | 'not-captured' | 'nas-unreachable';

const STANDING_TEXT: Record<Standing, (domain: string) => string> = {
  'in-step': () => 'the same as the NAS head\'s',
  'changed-here': (domain) => `changed here since it was last pushed or put in place: the next stop (or kss push ${domain}) takes it to the NAS`,
  behind: (domain) => `the NAS head has a newer one: the next start (or kss pull ${domain}) puts it in place`,
  'not-captured': (domain) => `not captured yet: the next stop (or kss push ${domain}) does`,
  'nas-unreachable': () => 'the NAS cannot be reached to compare',
};

/** Pure: where libvirt's definition here (`hash`) stands; `nasHead`: the NAS head's definition (null: none; undefined: not known). */
function standingOf(hash: string, state: LocalState, nasHead: string | null | undefined): Standing {
  if (state.definition === undefined) return 'not-captured';
  if (hash !== state.definition) return 'changed-here';
  if (nasHead === undefined) return 'nas-unreachable';
  // With generations of its own waiting to be pushed, this host's is the newer one.
  return nasHead !== null && nasHead !== state.definition && state.pending.length === 0 ? 'behind' : 'in-step';
}

export async function definitionCommand(o: { domain: string; json: boolean }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  const state = await readLocalState(config.stateDir, o.domain);
  const here = await splitHere(config.stateDir, state, await definitionXml(o.domain, context.env), config);
  const repository = openRepository(config, new Logger([]));
  let nasHead: { generation: string; host: string; definition: string | null } | undefined;
  try {
    const manifest = await repository.readManifest(o.domain);
    const head = manifest?.head ? manifest.generations[manifest.head] : undefined;
    if (head) nasHead = { generation: head.id, host: head.host, definition: head.definition ?? null };
  } catch {
    nasHead = undefined;
  } finally {
    await repository.close();
  }
  const standing = standingOf(here.hash, state, nasHead?.definition);
  const own = describeHostPart(here.host);
  if (o.json) {
    return printJson(context, { domain: o.domain, portable: { hash: here.hash, xml: here.text }, host: { items: own, xml: serializeXml(here.host) }, recorded: state.definition ?? null, nasHead: nasHead ?? null, standing });
  }
  const lines = [
    `${o.domain}: definition ${here.hash.slice(0, 12)}, ${STANDING_TEXT[standing](o.domain)}`,
    `travels with every generation (the portable part):`,
    ...here.text.trimEnd().split('\n').map((line) => `  ${line}`),
    `stays on this host (its own part, ${join(domainStateDir(config.stateDir, o.domain), 'host.xml')}; change it with virsh edit here):`,
    ...(own.length === 0 ? ['  (nothing)'] : own.map(({ element, value }) => `  ${element}: ${value.replaceAll('\n', ' ').replaceAll(/\s+/gu, ' ')}`)),
  ];
  context.stdout.write(`${lines.join('\n')}\n`);
}
