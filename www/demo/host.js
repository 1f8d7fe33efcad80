// What the host page receives: only these events.
const log = (window.medseeEvents = []);
for (const name of ['medsee-ready', 'medsee-answer', 'medsee-explained', 'medsee-error']) {
  document.getElementById('viewer').addEventListener(name, (e) => log.push({ name, detail: e.detail }));
}
