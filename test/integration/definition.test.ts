// The definition travels, end to end on real libvirtd: a change made on either host
// (while the VM runs, with --config, or while it is shut off) reaches the other at its
// next start, which is refused once while the change is put in place; what belongs to
// one host (a device passed through, a bridge, a listen address) stays on that host;
// a conflict and a rollback carry the definition with the disks.
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { MiB, createImage, qemuIo } from '../helpers/disks.js';
import { LIBVIRT_TOOLS, LibvirtHost, tinyDomainXml } from '../helpers/libvirt-host.js';
import { startLibvirtPair, type LibvirtPair } from '../helpers/libvirt-pair.js';
import { forgeHeadDefinition, headDefinition } from '../helpers/nas-definitions.js';
import { SSH_NAS_TOOLS } from '../helpers/ssh-nas.js';
import { requireTools } from '../helpers/tools.js';

const IMAGES = '/var/lib/libvirt/images';
let pair: LibvirtPair | undefined;

before(async (t) => {
  if (!requireTools(t as unknown as TestContext, ...LIBVIRT_TOOLS, ...SSH_NAS_TOOLS)) return;
  pair = await startLibvirtPair('kss-definition-', { pool: true });
});
after(() => pair?.stop());

const inactive = (host: LibvirtHost, domain: string) => host.mustVirsh('dumpxml', '--inactive', domain);
const memoryOf = (xml: string) => /<memory unit='KiB'>(\d+)<\/memory>/u.exec(xml)?.[1];
const vcpusOf = (xml: string) => /<vcpu[^>]*>(\d+)<\/vcpu>/u.exec(xml)?.[1];

/** Waits until the domain's inactive definition on `host` passes `done` (the background work put it in place). */
async function definitionBecomes(host: LibvirtHost, domain: string, done: (xml: string) => boolean): Promise<string> {
  for (const deadline = Date.now() + 60_000; ; ) {
    const xml = inactive(host, domain);
    if (done(xml)) return xml;
    if (Date.now() > deadline) throw new Error(`the definition of ${domain} on ${host.name} did not change:\n${xml}\n${host.hookLog(domain).split('\n').slice(-10).join('\n')}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** A start refused once because the definition changed elsewhere, then put in place; returns the definition then. */
async function refusedOnceThenStarted(host: LibvirtHost, domain: string, done: (xml: string) => boolean): Promise<string> {
  const refused = host.virsh('start', domain);
  assert.notEqual(refused.status, 0, `the first start is refused:\n${host.hookLog(domain)}`);
  assert.match(refused.stderr, new RegExp(`${domain}'s definition is newer on the NAS \\(generation [0-9a-f]{12} from host \\w+, [^)]+\\) than the one libvirt has here; it is being put in place now\\.\\nTo fix: start ${domain} again in a moment`, 'u'));
  await host.waitForStop(domain); // libvirt runs the release hook after a refused start
  const xml = await definitionBecomes(host, domain, done);
  const started = host.virsh('start', domain);
  assert.equal(started.status, 0, `the next start runs with it: ${started.stderr}\n${host.hookLog(domain)}`);
  return xml;
}

/** A tiny domain with one empty disk, enabled on the desktop and cloned on the laptop. */
function enabledOnBoth(domain: string): void {
  const { desk, laptop } = pair as LibvirtPair;
  const disk = `${IMAGES}/${domain}.qcow2`;
  createImage(desk.outside(disk), 16 * MiB);
  desk.define(domain, tinyDomainXml(domain, { vda: disk }, false));
  assert.equal(desk.kss(['enable', domain]).status, 0);
  const cloned = laptop.kss(['clone', domain]);
  assert.equal(cloned.status, 0, cloned.stderr);
}

/** The NAS head's portable definition, as the NAS holds it. */
const nasHeadDefinition = (domain: string) => headDefinition((pair as LibvirtPair).nas.root, domain);

describe('the definition on real libvirtd', () => {
  it('a change made on either host reaches the other at its next start; a round trip of no change refuses nothing', async (t) => {
    if (!pair) return void t.skip('needs libvirt and sshd');
    const { desk: d, laptop: l } = pair;
    const disk = `${IMAGES}/dfn.qcow2`;
    createImage(d.outside(disk), 16 * MiB);
    qemuIo(d.outside(disk), 'write -P 0x21 0 1M');
    d.define('dfn', tinyDomainXml('dfn', { vda: disk }, false));
    assert.equal(d.kss(['enable', 'dfn']).status, 0);
    assert.doesNotMatch(nasHeadDefinition('dfn'), /<emulator>/u, 'the emulator is the host\'s own');
    const cloned = l.kss(['clone', 'dfn']);
    assert.equal(cloned.status, 0, cloned.stderr);

    // On the desktop, while it runs: more memory from the next boot on.
    d.mustVirsh('start', 'dfn');
    d.mustVirsh('setmaxmem', 'dfn', '98304', '--config');
    d.mustVirsh('setmem', 'dfn', '98304', '--config');
    d.guestIo('dfn', 'write -P 0x22 1M 1M');
    d.mustVirsh('destroy', 'dfn');
    await d.waitForStop('dfn');
    assert.match(nasHeadDefinition('dfn'), /<memory unit='KiB'>98304<\/memory>/u, 'the stop work took it to the NAS');

    const onLaptop = await refusedOnceThenStarted(l, 'dfn', (xml) => memoryOf(xml) === '98304');
    assert.match(l.mustVirsh('dumpxml', 'dfn'), /<memory unit='KiB'>98304<\/memory>/u, 'the laptop runs with it');
    assert.match(onLaptop, /<emulator>\/usr\/bin\/qemu-system-x86_64<\/emulator>/u, "with this host's emulator");
    assert.match(l.hookLog('dfn'), /put the definition in place/u);
    l.guestIo('dfn', 'read -P 0x22 1M 1M');
    // On the laptop, while it runs: a second vCPU.
    l.mustVirsh('setvcpus', 'dfn', '2', '--config', '--maximum');
    l.mustVirsh('setvcpus', 'dfn', '2', '--config');
    l.mustVirsh('destroy', 'dfn');
    await l.waitForStop('dfn');

    await refusedOnceThenStarted(d, 'dfn', (xml) => vcpusOf(xml) === '2');
    assert.equal(vcpusOf(d.mustVirsh('dumpxml', 'dfn')), '2', 'the desktop runs with the laptop\'s change');
    assert.equal(memoryOf(d.mustVirsh('dumpxml', 'dfn')), '98304', 'and its own from before');
    d.mustVirsh('destroy', 'dfn');
    await d.waitForStop('dfn');

    // Nothing changed since: each host starts at once.
    await l.session('dfn', ['read -P 0x22 1M 1M']);
    await d.session('dfn', ['read -P 0x21 0 1M']);
  });

  it("keeps a passed-through device, a bridge and a listen address on the host that has them; the other host's changes still reach it", async (t) => {
    if (!pair) return void t.skip('needs libvirt and sshd');
    const { desk: d, laptop: l } = pair;
    enabledOnBoth('gpu');

    // The desktop's own: a USB device passed through, a bridge, VNC on every address (the desktop cannot start it here: no such device).
    const own = [
      "<hostdev mode='subsystem' type='usb' managed='yes'><source><vendor id='0x1234'/><product id='0x5678'/></source></hostdev>",
      "<interface type='bridge'><mac address='52:54:00:de:5c:01'/><source bridge='kssbr0'/><model type='virtio'/></interface>",
      "<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'><listen type='address' address='0.0.0.0'/></graphics>",
    ];
    d.define('gpu', inactive(d, 'gpu').replace('</devices>', `${own.join('')}</devices>`));
    const pushed = d.kss(['push', 'gpu']);
    assert.equal(pushed.status, 0, pushed.stderr);
    const portable = nasHeadDefinition('gpu');
    assert.match(portable, /<interface type='network'>\s*<mac address='52:54:00:de:5c:01'\/>\s*<source network='default'\/>/u, 'the interface travels, on the default network');
    assert.doesNotMatch(portable, /hostdev|kssbr0|0\.0\.0\.0|<emulator>/u, "nothing of the desktop's own reaches the NAS");

    const shown = d.kss(['definition', 'gpu']);
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /^gpu: definition [0-9a-f]{12}, the same as the NAS head's\ntravels with every generation \(the portable part\):\n {2}<domain /u);
    assert.match(shown.stdout, /\nstays on this host \(its own part, [^)]*host\.xml; change it with virsh edit here\):\n(.*\n)*? {2}<hostdev>: <hostdev mode='subsystem' type='usb'/u);
    assert.match(shown.stdout, /\n {2}<interface> 52:54:00:de:5c:01: <interface mac='52:54:00:de:5c:01' type='bridge'> <source bridge='kssbr0'\/> <\/interface>\n/u);
    const json = JSON.parse(d.kss(['definition', 'gpu', '--json']).stdout);
    assert.equal(json.standing, 'in-step');
    assert.doesNotMatch(json.portable.xml, /hostdev/u);
    assert.match(json.host.xml, /<hostdev/u);

    const pulled = l.kss(['pull', 'gpu']);
    assert.equal(pulled.status, 0, pulled.stderr);
    assert.match(pulled.stdout, /^gpu: the definition of generation [0-9a-f]{12} \(from host desk\) is in place here\n/u);
    const onLaptop = inactive(l, 'gpu');
    assert.match(onLaptop, /<interface type='network'>\s*<mac address='52:54:00:de:5c:01'\/>\s*<source network='default'\/>/u, "the desktop's interface, on the laptop's default network");
    assert.doesNotMatch(onLaptop, /hostdev|kssbr0|0\.0\.0\.0/u, "none of the desktop's own is on the laptop");
    assert.match(onLaptop, /<graphics type='vnc'/u, 'the display travels, on the default listen address');

    // The laptop has no default network: it connects the interface its own way (virsh edit here), and nothing travels.
    const before = nasHeadDefinition('gpu');
    l.define('gpu', onLaptop.replace(/<interface type='network'>([\s\S]*?)<source network='default'\/>/u, "<interface type='user'>$1"));
    const ownHere = JSON.parse(l.kss(['definition', 'gpu', '--json']).stdout);
    assert.equal(ownHere.standing, 'in-step', 'a change of its own part is no change of the definition that travels');
    assert.match(ownHere.host.xml, /<interface mac='52:54:00:de:5c:01' type='user'\/>/u);
    // The laptop changes the memory while it runs: the desktop gets it, and keeps its own.
    l.mustVirsh('start', 'gpu');
    l.mustVirsh('setmaxmem', 'gpu', '131072', '--config');
    l.mustVirsh('setmem', 'gpu', '131072', '--config');
    l.mustVirsh('destroy', 'gpu');
    await l.waitForStop('gpu');
    const fromLaptop = nasHeadDefinition('gpu');
    assert.notEqual(fromLaptop, before);
    assert.match(fromLaptop, /<interface type='network'>\s*<mac address='52:54:00:de:5c:01'\/>\s*<source network='default'\/>/u, "the laptop's user networking stays on the laptop");
    assert.doesNotMatch(fromLaptop, /hostdev|kssbr0|0\.0\.0\.0|type='user'/u);
    const back = d.kss(['pull', 'gpu']);
    assert.equal(back.status, 0, back.stderr);
    assert.match(back.stdout, /from host laptop\) is in place here/u);
    const onDesk = inactive(d, 'gpu');
    assert.equal(memoryOf(onDesk), '131072', "the laptop's change");
    assert.match(onDesk, /<hostdev mode='subsystem' type='usb' managed='yes'>/u, 'the device passed through stays');
    assert.match(onDesk, /<interface type='bridge'>\s*<mac address='52:54:00:de:5c:01'\/>\s*<source bridge='kssbr0'\/>/u, 'the bridge stays');
    assert.match(onDesk, /listen='0\.0\.0\.0'/u, 'the listen address stays');
  });

  it('refuses a definition from the NAS that would turn its disk raw and shared, or connect it to a host device; nothing changes here', async (t) => {
    if (!pair) return void t.skip('needs libvirt and sshd');
    const { laptop: l, nas } = pair;
    enabledOnBoth('forged');
    const honest = headDefinition(nas.root, 'forged');
    const before = inactive(l, 'forged');
    const forgeries: Array<[string, RegExp]> = [
      [honest.replace("<driver name='qemu' type='qcow2'/>", "<driver name='qemu' type='raw'/>").replace('</disk>', '<shareable/></disk>'), /<disk> vda: \/var\/lib\/libvirt\/images\/forged\.qcow2 is this host's synced disk vda: it stays a writable qcow2 disk vda/u],
      [honest.replace('</devices>', "<interface type='direct'><mac address='52:54:00:66:66:66'/><source dev='lo' mode='bridge'/></interface></devices>"), /<interface type='direct'>: connects the guest to something other than a libvirt network/u],
      [honest.replace(/<metadata>[\s\S]*<\/metadata>/u, ''), /<metadata>: lacks the kvm-snapshot-sync element/u],
    ];
    for (const [xml, why] of forgeries) {
      assert.notEqual(xml, honest);
      forgeHeadDefinition(nas.root, 'forged', xml);
      const pulled = l.kss(['pull', 'forged']);
      assert.equal(pulled.status, 6, `${pulled.stdout}${pulled.stderr}`);
      assert.match(pulled.stderr, /the definition of forged on the NAS is refused; the definition here was not changed:/u);
      assert.match(pulled.stderr, why);
      assert.equal(inactive(l, 'forged'), before, 'the definition here is as it was');
    }
  });

  it('a conflict of definitions: resolve keeps one side, the other is a branch, and a rollback brings it back', async (t) => {
    if (!pair) return void t.skip('needs libvirt and sshd');
    const { desk: d, laptop: l } = pair;
    enabledOnBoth('both');

    d.mustVirsh('setmaxmem', 'both', '81920', '--config');
    assert.equal(d.kss(['push', 'both']).status, 0);
    l.mustVirsh('setvcpus', 'both', '2', '--config', '--maximum');
    const conflict = l.kss(['push', 'both']);
    assert.equal(conflict.status, 9, `both changed it: ${conflict.stderr}`);
    const kept = l.kss(['resolve', 'both', '--keep', 'remote']);
    assert.equal(kept.status, 0, kept.stderr);
    assert.match(kept.stdout, /^both: kept remote; head [0-9a-f]{12}; the other side is branch (conflict-\S+)\nboth: the definition of generation [0-9a-f]{12} \(from host desk\) is in place here\n$/u);
    const branch = /branch (conflict-\S+)/u.exec(kept.stdout)?.[1] as string;
    const resolved = inactive(l, 'both');
    assert.deepEqual([memoryOf(resolved), vcpusOf(resolved)], ['81920', '1'], "the desktop's definition, not the laptop's");

    const rolled = l.kss(['rollback', 'both', '--to', branch]);
    assert.equal(rolled.status, 0, rolled.stderr);
    assert.match(rolled.stdout, /is in place here\n$/u);
    const back = inactive(l, 'both');
    assert.deepEqual([memoryOf(back), vcpusOf(back)], ['65536', '2'], "the laptop's own definition, as the branch kept it");
    await refusedOnceThenStarted(d, 'both', (xml) => vcpusOf(xml) === '2');
    d.mustVirsh('destroy', 'both');
    await d.waitForStop('both');
  });
});
