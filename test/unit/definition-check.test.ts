import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  buildRefusal,
  checkDefinition,
  formatDefinition,
  normalizeUuid,
  planClone,
  planDiskPaths,
  poolDirOf,
  readDomainCapabilities,
  summarizeDefinition,
  type CloneRequest,
  type HostFacts,
  type Problem,
} from '../../lib/definition-check.js';
import { parseXmlTree, type DiskRecord } from '../../lib/domain-xml.js';
import { ExitCode } from '../../lib/errors.js';
import { NAMESPACE_URI } from '../../lib/namespace.js';

const QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0';
const WORK_UUID = '4dea22b3-1d52-d8f3-2516-782e98ab3fa0';

const host: HostFacts = {
  domains: [{ name: 'work', uuid: WORK_UUID, disks: ['/var/lib/libvirt/images/work-root.qcow2'] }],
  poolDirs: ['/var/lib/libvirt/images', '/srv/pool'],
  emulator: '/usr/bin/qemu-system-x86_64',
  loaders: ['/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/share/OVMF/OVMF_CODE_4M.ms.fd'],
  nvramDir: '/var/lib/libvirt/qemu/nvram',
};


/** A definition as `virsh dumpxml --inactive` prints it for a UEFI VM made with virt-manager. */
const base = `<domain type='kvm'>
  <name>evil</name>
  <uuid>b6e507eb-925d-4b36-854e-154ac8dcafb8</uuid>
  <metadata>
    <kss:sync xmlns:kss="${NAMESPACE_URI}"/>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0"><libosinfo:os id="http://debian.org/debian/12"/></libosinfo:libosinfo>
  </metadata>
  <description>moved from /home/me, see https://example.org/x</description>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource><partition>/machine</partition></resource>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/evil_VARS.fd</nvram>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/evil.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:d4:f6:c5'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
    <input type='tablet' bus='usb'/>
    <graphics type='spice' autoport='yes'><listen type='address'/><image compression='off'/></graphics>
    <audio id='1' type='spice'/>
    <video><model type='virtio' heads='1' primary='yes'/></video>
    <redirdev bus='usb' type='spicevmc'/>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
  <seclabel type='dynamic' model='apparmor' relabel='yes'/>
</domain>`;

/** The base with `from` replaced by `to` (which must be there). */
function edit(from: string, to: string): string {
  assert.ok(base.includes(from), `the base has ${from}`);
  return base.replace(from, to);
}
const device = (xml: string) => edit('</devices>', `${xml}\n  </devices>`);
const withQemu = (xml: string) => edit("<domain type='kvm'>", `<domain type='kvm' xmlns:qemu='${QEMU_NS}'>`).replace('</devices>', `</devices>\n  ${xml}`);

/** The problems of a definition, its disks planned as kss clone plans them (or as `asked` says). */
async function check(xml: string, facts: HostFacts = host, asked: CloneRequest | { dir: string } = { dir: '' }): Promise<Problem[]> {
  const root = await parseXmlTree(xml);
  const planned = 'disks' in asked ? asked : planClone(root, { name: 'evil', dir: asked.dir || undefined });
  return checkDefinition(xml, root, facts, planned);
}

describe('checkDefinition', () => {
  const accepted: Array<[string, string, { dir: string }?]> = [
    ['a definition as virt-manager makes it', base],
    ['no <emulator> (libvirt puts in its default)', edit('<emulator>/usr/bin/qemu-system-x86_64</emulator>', '')],
    ['no <uuid> (libvirt chooses one)', edit('<uuid>b6e507eb-925d-4b36-854e-154ac8dcafb8</uuid>', '')],
    ['a CD-ROM image in a storage pool', edit("<target dev='sda' bus='sata'/>", "<source file='/srv/pool/debian.iso'/><target dev='sda' bus='sata'/>")],
    ['a guest agent channel whose socket libvirt places', edit("<channel type='unix'>", "<channel type='unix'><source mode='bind'/>")],
    [
      'the disks in --dir',
      edit('/var/lib/libvirt/images/evil.qcow2', '/home/vm/evil.qcow2'),
      { dir: '/home/vm' },
    ],
  ];
  for (const [name, xml, asked] of accepted) {
    it(`takes ${name}`, async () => assert.deepEqual(await check(xml, host, asked), []));
  }

  // [case, definition, the element named, kind]
  const refused: Array<[string, string, RegExp, Problem['kind']]> = [
    ['another domain named', edit('<name>evil</name>', '<name>work</name>'), /^<name>$/u, 'unsafe'],
    ['no name', edit('<name>evil</name>', ''), /^<name>$/u, 'unsafe'],
    ['the UUID of a domain defined here', edit('b6e507eb-925d-4b36-854e-154ac8dcafb8', WORK_UUID), /^<uuid>$/u, 'in-use'],
    ['that UUID spelt otherwise (libvirt reads it the same)', edit('b6e507eb-925d-4b36-854e-154ac8dcafb8', ' 4DEA22B31D52D8F3 2516782E98AB3FA0'), /^<uuid>$/u, 'in-use'],
    ['a UUID that is none', edit('b6e507eb-925d-4b36-854e-154ac8dcafb8', 'work'), /^<uuid>$/u, 'unsafe'],
    ['<qemu:commandline>', withQemu("<qemu:commandline><qemu:arg value='-chardev'/><qemu:arg value='file,id=x,path=/etc/shadow'/></qemu:commandline>"), /^<qemu:commandline>$/u, 'unsafe'],
    ['<qemu:capabilities>', withQemu("<qemu:capabilities><qemu:del capability='sandbox'/></qemu:capabilities>"), /^<qemu:capabilities>$/u, 'unsafe'],
    ['<qemu:override>', withQemu("<qemu:override><qemu:device alias='x'><qemu:frontend><qemu:property name='p' type='string' value='v'/></qemu:frontend></qemu:device></qemu:override>"), /^<qemu:override>$/u, 'unsafe'],
    ['<qemu:deprecation>', withQemu("<qemu:deprecation behavior='crash'/>"), /^<qemu:deprecation>$/u, 'unsafe'],
    ['the qemu namespace under another prefix', edit('</devices>', `</devices><x:commandline xmlns:x='${QEMU_NS}'><x:env name='LD_PRELOAD' value='/tmp/x.so'/></x:commandline>`), /^<x:commandline>$/u, 'unsafe'],
    ['the qemu namespace inside <metadata>', edit('</metadata>', `<q:commandline xmlns:q='${QEMU_NS}'/></metadata>`), /^<q:commandline>$/u, 'unsafe'],
    ['the qemu namespace declared, if only that', edit("<domain type='kvm'>", `<domain type='kvm' xmlns:qemu='${QEMU_NS}'>`), /^<domain xmlns:qemu>$/u, 'unsafe'],
    ['an element of another namespace outside <metadata>', device("<x:disk xmlns:x='urn:x'/>"), /^<x:disk>$/u, 'unsafe'],
    ['an emulator not this host\'s', edit('<emulator>/usr/bin/qemu-system-x86_64</emulator>', '<emulator>/tmp/evil</emulator>'), /^<emulator>\/tmp\/evil/u, 'unsafe'],
    ['a block device', edit("<disk type='file' device='cdrom'>", "<disk type='block' device='cdrom'><source dev='/dev/sda'/>"), /^<disk type='block'> sda$/u, 'unsafe'],
    ['a network disk on a host socket', device("<disk type='network' device='disk'><source protocol='nbd'><host transport='unix' socket='/run/x.sock'/></source><target dev='vdc'/></disk>"), /^<disk type='network'> vdc$/u, 'unsafe'],
    ['a pool volume', device("<disk type='volume' device='disk'><source pool='default' volume='work-root.qcow2'/><target dev='vdc'/></disk>"), /^<disk type='volume'> vdc$/u, 'unsafe'],
    ['a SCSI LUN', device("<disk type='block' device='lun'><source dev='/dev/sdb'/><target dev='sdc' bus='scsi'/></disk>"), /^<disk device='lun'> sdc$/u, 'unsafe'],
    ['a disk outside the storage pools', edit('/var/lib/libvirt/images/evil.qcow2', '/root/evil-disk.qcow2'), /^<disk> vda$/u, 'placement'],
    ['a disk path climbing out with ..', edit('/var/lib/libvirt/images/evil.qcow2', '/var/lib/libvirt/images/../../../../root/evil.qcow2'), /^<disk> vda$/u, 'unsafe'],
    ['a relative disk path', edit("<target dev='sda' bus='sata'/>", "<source file='etc/shadow'/><target dev='sda' bus='sata'/>"), /^<disk> sda$/u, 'unsafe'],
    ['a disk in a layers directory', edit('/var/lib/libvirt/images/evil.qcow2', '/var/lib/libvirt/images/work-root.qcow2.layers/x.qcow2'), /^<disk> vda$/u, 'unsafe'],
    ['a disk of another domain, as a CD-ROM', edit("<target dev='sda' bus='sata'/>", "<source file='/var/lib/libvirt/images/work-root.qcow2'/><target dev='sda' bus='sata'/>"), /^<disk> sda$/u, 'unsafe'],
    ['a CD-ROM outside the storage pools', edit("<target dev='sda' bus='sata'/>", "<source file='/etc/shadow'/><target dev='sda' bus='sata'/>"), /^<disk> sda$/u, 'placement'],
    ['a backing chain of its own', edit("<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/><backingStore type='file'><format type='raw'/><source file='/etc/shadow'/></backingStore>"), /<backingStore>/u, 'unsafe'],
    ['an unconfined disk', edit("<source file='/var/lib/libvirt/images/evil.qcow2'/>", "<source file='/var/lib/libvirt/images/evil.qcow2'><seclabel model='dac' relabel='no'/></source>"), /^<seclabel>$/u, 'unsafe'],
    ['two disks on one target', edit("<target dev='sda' bus='sata'/>", "<target dev='vda' bus='sata'/>"), /^<disk> vda$/u, 'unsafe'],
    ['a host directory shared', device("<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/><binary path='/tmp/evil'/><source dir='/'/><target dir='root'/></filesystem>"), /^<filesystem type='mount'>$/u, 'unsafe'],
    ['a host device', device("<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev>"), /^<hostdev type='usb'>$/u, 'unsafe'],
    ['a serial port on a host file', device("<serial type='file'><source path='/root/.ssh/authorized_keys'/></serial>"), /^<serial type='file'>$/u, 'unsafe'],
    ['a serial port on a pipe', device("<serial type='pipe'><source path='/tmp/p'/></serial>"), /^<serial type='pipe'>$/u, 'unsafe'],
    ['a serial port on a host device', device("<serial type='dev'><source path='/dev/ttyS0'/></serial>"), /^<serial type='dev'>$/u, 'unsafe'],
    ['a channel on a socket of its choosing', device("<channel type='unix'><source mode='bind' path='/run/libvirt/libvirt-sock'/><target type='virtio' name='x'/></channel>"), /^<channel type='unix'>$/u, 'unsafe'],
    ['a console on a network port', device("<console type='tcp'><source mode='bind' host='0.0.0.0' service='2445'/></console>"), /^<console type='tcp'>$/u, 'unsafe'],
    ['a console logging to a host file', edit("<console type='pty'>", "<console type='pty'><log file='/etc/cron.d/x'/>"), /^<log file=/u, 'unsafe'],
    ['a script run at start', device("<interface type='ethernet'><script path='/tmp/evil.sh'/></interface>"), /^<script>$/u, 'unsafe'],
    ['a vhost-user socket', device("<interface type='vhostuser'><source type='unix' path='/tmp/s' mode='client'/></interface>"), /^<interface type='vhostuser'>$/u, 'unsafe'],
    ['a tap device of its choosing', edit("<model type='virtio'/>", "<model type='virtio'/><backend tap='/dev/sda' vhost='/dev/vhost-net'/>"), /^<backend tap=/u, 'unsafe'],
    ['a NIC ROM from a host file', edit("<model type='virtio'/>", "<model type='virtio'/><rom file='/etc/shadow'/>"), /^<rom file=/u, 'unsafe'],
    ['firmware not this host\'s', edit('/usr/share/OVMF/OVMF_CODE_4M.fd<', '/root/bios.fd<'), /^<loader>/u, 'unsafe'],
    ['writable firmware', edit("<loader readonly='yes'", "<loader readonly='no'"), /^<loader readonly='no'>$/u, 'unsafe'],
    ['UEFI variables in another file', edit('/var/lib/libvirt/qemu/nvram/evil_VARS.fd', '/var/lib/libvirt/qemu/nvram/work_VARS.fd'), /^<nvram>/u, 'unsafe'],
    ['UEFI variables from a host file', edit('/usr/share/OVMF/OVMF_VARS_4M.fd', '/etc/shadow'), /^<nvram template=/u, 'unsafe'],
    ['a kernel from the host', edit("<boot dev='hd'/>", '<kernel>/boot/vmlinuz</kernel><initrd>/etc/shadow</initrd>'), /^<initrd>$/u, 'unsafe'],
    ['ACPI tables from host files', edit("<boot dev='hd'/>", "<boot dev='hd'/><acpi><table type='slic'>/etc/shadow</table></acpi>"), /^<acpi>$/u, 'unsafe'],
    ['no confinement', edit("type='dynamic' model='apparmor'", "type='none'"), /^<seclabel type='none'>$/u, 'unsafe'],
    ['the none security model', edit("model='apparmor'", "model='none'"), /^<seclabel type='dynamic'>$/u, 'unsafe'],
    ['QEMU as root (a static DAC label)', edit("<seclabel type='dynamic' model='apparmor' relabel='yes'/>", "<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>"), /^<seclabel type='static'>$/u, 'unsafe'],
    ['a base label of its choosing', edit("<seclabel type='dynamic' model='apparmor' relabel='yes'/>", "<seclabel type='dynamic' model='selinux'><baselabel>unconfined_u:unconfined_r:unconfined_t:s0</baselabel></seclabel>"), /^<seclabel type='dynamic'>$/u, 'unsafe'],
    ["the host's smartcard reader", device("<smartcard mode='host'/>"), /^<smartcard>$/u, 'unsafe'],
    ["the host's keyboard", device("<input type='evdev'><source dev='/dev/input/event0'/></input>"), /^<input type='evdev'>$/u, 'unsafe'],
    ['entropy from a host file', edit('>/dev/urandom<', '>/etc/shadow<'), /^<rng><backend>/u, 'unsafe'],
    ["the host's TPM", edit("<backend type='emulator' version='2.0'/>", "<backend type='passthrough'><device path='/dev/tpm0'/></backend>"), /^<tpm>$/u, 'unsafe'],
    ['shared memory', device("<shmem name='work'><model type='ivshmem-plain'/></shmem>"), /^<shmem>$/u, 'unsafe'],
    ['an NVDIMM on a host file', device("<memory model='nvdimm'><source><path>/etc/shadow</path></source><target><size unit='KiB'>1024</size></target></memory>"), /^<path>\/etc\/shadow<\/path>$/u, 'unsafe'],
    ['a host file through fw_cfg', edit('<features>', "<sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo><features>"), /^<entry file=/u, 'unsafe'],
    ["the host's display", device("<graphics type='sdl' display=':0' xauth='/root/.Xauthority'/>"), /^<graphics type='sdl'>$/u, 'unsafe'],
    ['sound recorded into a host file', edit("<audio id='1' type='spice'/>", "<audio id='1' type='file' path='/etc/passwd'/>"), /^<audio type='file'>$/u, 'unsafe'],
    ["the host's microphone", edit("<audio id='1' type='spice'/>", "<audio id='1' type='alsa'><input dev='hw:0'/></audio>"), /^<audio type='alsa'>$/u, 'unsafe'],
    ['a synced disk opened as raw', edit("<driver name='qemu' type='qcow2'/>", "<driver name='qemu' type='raw'/>"), /^<disk> vda <driver type='raw'>$/u, 'unsafe'],
    ['real-time vCPUs', edit('<resource>', "<cputune><vcpusched vcpus='0-1' scheduler='fifo' priority='99'/></cputune><resource>"), /^<vcpusched scheduler='fifo'>$/u, 'unsafe'],
    ['a cgroup outside /machine', edit('<partition>/machine</partition>', '<partition>/machine/../system.slice</partition>'), /^<partition>/u, 'unsafe'],
    ['a document type declaration', `<!DOCTYPE domain [<!ATTLIST source file CDATA "/etc/shadow">]>\n${base}`, /^<!DOCTYPE>$/u, 'unsafe'],
    ['another encoding', `<?xml version='1.0' encoding='UTF-7'?>\n${base}`, /^<\?xml\?>$/u, 'unsafe'],
    ['a domain of another driver', edit("<domain type='kvm'>", "<domain type='lxc'>"), /^<domain type='lxc'>$/u, 'unsafe'],
    ['a second <devices>', edit('</devices>', "</devices><devices><disk type='file' device='disk'><source file='/root/x'/><target dev='vdz'/></disk></devices>"), /^<devices>$/u, 'unsafe'],
  ];
  for (const [name, xml, element, kind] of refused) {
    it(`refuses ${name}`, async () => {
      const problems = await check(xml);
      assert.ok(
        problems.some((p) => element.test(p.element) && p.kind === kind),
        `a ${kind} problem at ${element}; got:\n${problems.map((p) => `${p.kind} ${p.element}: ${p.message}`).join('\n')}`,
      );
    });
  }

  it('names what is wrong, and nothing else, in a definition as the attack had it', async () => {
    const problems = await check(edit('<name>evil</name>', '<name>work</name>').replace('b6e507eb-925d-4b36-854e-154ac8dcafb8', WORK_UUID));
    assert.deepEqual(
      problems.map((p) => [p.element, p.kind]),
      [['<name>', 'unsafe'], ['<uuid>', 'in-use']],
    );
    assert.match(problems[0]?.message ?? '', /is "work", not evil/u);
    assert.match(problems[1]?.message ?? '', /is the UUID of work, defined on this host: defining it would replace work/u);
  });

  it('refuses a domain of the name asked for that is defined here', async () => {
    const problems = await check(base, { ...host, domains: [...host.domains, { name: 'evil', uuid: undefined, disks: [] }] });
    assert.deepEqual(problems.map((p) => [p.element, p.kind]), [['<name>', 'in-use']]);
  });

  it('refuses a disk other than planned (the definition was edited wrongly)', async () => {
    const problems = await check(base, host, { name: 'evil', dir: undefined, disks: { vda: '/home/vm/evil.qcow2' } });
    assert.match(problems.map((p) => p.message).join('\n'), /is not where the disk was to go/u);
  });

  it('puts synced disks only in --dir when it is given, other files in a pool or --dir', async () => {
    const asked = { name: 'evil', dir: '/home/vm', disks: { vda: '/var/lib/libvirt/images/evil.qcow2' } };
    assert.match((await check(base, host, asked)).map((p) => p.message).join('\n'), /outside --dir \(\/home\/vm\)/u);
    const iso = edit("<target dev='sda' bus='sata'/>", "<source file='/home/vm/debian.iso'/><target dev='sda' bus='sata'/>").replace('/var/lib/libvirt/images/evil.qcow2', '/home/vm/evil.qcow2');
    assert.deepEqual(await check(iso, host, { dir: '/home/vm' }), []);
  });

  it('says when this host has no storage pool of files', async () => {
    const problems = await check(base, { ...host, poolDirs: [] });
    assert.deepEqual(problems.map((p) => [p.element, p.kind]), [['<disk> vda', 'placement']]);
    assert.match(problems[0]?.message ?? '', /this host has no storage pool of files/u);
  });
});

describe('normalizeUuid', () => {
  for (const [text, expected] of [
    [WORK_UUID, '4dea22b31d52d8f32516782e98ab3fa0'],
    ['4DEA22B31D52D8F32516782E98AB3FA0', '4dea22b31d52d8f32516782e98ab3fa0'],
    [' 4dea 22b3-1d52d8f32516782e98ab3fa0\n', '4dea22b31d52d8f32516782e98ab3fa0'],
    ['4dea22b3', undefined],
    ['4dea22b3-1d52-d8f3-2516-782e98ab3fa0x', undefined],
  ] as const) {
    it(`${JSON.stringify(text)} → ${expected}`, () => assert.equal(normalizeUuid(text), expected));
  }
});

describe('planDiskPaths', () => {
  const disk = (target: string, path: string): DiskRecord => ({ target, path, type: 'file', device: 'disk', format: 'qcow2', readonly: false, shareable: false });
  const cases: Array<[string, DiskRecord[], string | undefined, Record<string, string>]> = [
    ['without --dir, where they were', [disk('vda', '/a/root.qcow2')], undefined, { vda: '/a/root.qcow2' }],
    ['in DIR, under their own names', [disk('vda', '/a/root.qcow2'), disk('vdb', '/b/home.img')], '/srv/vm', { vda: '/srv/vm/root.qcow2', vdb: '/srv/vm/home.img' }],
    [
      'in DIR; a shared file name gets the target',
      [disk('vda', '/a/disk.qcow2'), disk('vdb', '/b/disk.qcow2'), disk('vdc', '/c/data.qcow2')],
      '/srv/vm',
      { vda: '/srv/vm/disk-vda.qcow2', vdb: '/srv/vm/disk-vdb.qcow2', vdc: '/srv/vm/data.qcow2' },
    ],
    ['in DIR; names without an extension', [disk('vda', '/a/disk'), disk('vdb', '/b/disk')], '/srv/vm', { vda: '/srv/vm/disk-vda', vdb: '/srv/vm/disk-vdb' }],
  ];
  for (const [name, disks, dir, expected] of cases) it(name, () => assert.deepEqual(planDiskPaths(disks, dir), expected));
});

describe('what kss clone prints and throws', () => {
  it('prints name, UUID, memory, vCPUs, each disk and the emulator', async () => {
    const xml = edit("<target dev='sda' bus='sata'/>", "<source file='/srv/pool/debian.iso'/><target dev='sda' bus='sata'/>");
    assert.equal(
      formatDefinition(summarizeDefinition(await parseXmlTree(xml)), { here: '/usr/bin/qemu-system-x86_64', nas: '/usr/libexec/qemu-kvm' }),
      [
        'evil: the definition from the NAS: uuid b6e507eb-925d-4b36-854e-154ac8dcafb8, 2.0 GiB, 2 vCPUs',
        '  vda → /var/lib/libvirt/images/evil.qcow2',
        '  sda → /srv/pool/debian.iso (cdrom, read-only, not synced)',
        "  emulator /usr/bin/qemu-system-x86_64 (this host's; the NAS named /usr/libexec/qemu-kvm)",
        '',
      ].join('\n'),
    );
  });

  const problem = (kind: Problem['kind']): Problem => ({ element: '<x>', message: 'm', kind });
  for (const [kinds, code, remedy] of [
    [['placement'], ExitCode.usage, /--dir DIR/u],
    [['in-use'], ExitCode.usage, /virsh list --all --uuid/u],
    [['placement', 'unsafe'], ExitCode.integrity, /virsh edit evil, then kss push evil.*--dir DIR/su],
  ] as const) {
    it(`exits ${code} for ${kinds.join(' and ')} problems`, () => {
      const error = buildRefusal('evil', kinds.map(problem), '; nothing was changed here');
      assert.equal(error.exitCode, code);
      assert.match(error.message, /^the definition of evil on the NAS is refused; nothing was changed here:\n {2}<x>: m/u);
      assert.match(error.remedy ?? '', remedy);
    });
  }
});

describe('reading what libvirt says about this host', () => {
  it('takes the directory of a pool of files, and no other pool', async () => {
    const pool = (type: string, path: string) => parseXmlTree(`<pool type='${type}'><name>p</name><target><path>${path}</path></target></pool>`);
    assert.equal(poolDirOf(await pool('dir', '/var/lib/libvirt/images/')), '/var/lib/libvirt/images');
    assert.equal(poolDirOf(await pool('netfs', '/mnt/nfs')), '/mnt/nfs');
    assert.equal(poolDirOf(await pool('logical', '/dev/vg0')), undefined);
    assert.equal(poolDirOf(await pool('dir', 'relative')), undefined);
  });

  it('reads the emulator and the firmware of domcapabilities', async () => {
    const caps = await parseXmlTree(`<domainCapabilities><path>/usr/bin/qemu-system-x86_64</path><domain>kvm</domain>
      <os supported='yes'><loader supported='yes'><value>/usr/share/OVMF/OVMF_CODE_4M.fd</value><enum name='type'><value>pflash</value></enum></loader></os></domainCapabilities>`);
    assert.deepEqual(readDomainCapabilities(caps), { emulator: '/usr/bin/qemu-system-x86_64', loaders: ['/usr/share/OVMF/OVMF_CODE_4M.fd'] });
  });
});
