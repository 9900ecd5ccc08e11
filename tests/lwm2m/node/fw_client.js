// An lwm2m-node-lib CLIENT with Object 3 (Device) and Object 5 (Firmware Update) whose handlers
// hand the package to a suitkit device folder: the Package URI (5/0/1) is downloaded over HTTP
// into a file, Update (5/0/2) runs `suitkit device install DIR FILE`, and State (5/0/3) and
// Update Result (5/0/5) say how it went (OMA LwM2M Core, Appendix E.6).
//
// usage: node fw_client.js HOST PORT ENDPOINT DEVICE_DIR WORK_DIR SUITKIT_BIN [LIFETIME]
// Prints one line per step ("registered", "downloaded ...", "result N") to stdout.
'use strict';

var lwm2m = require('lwm2m-node-lib').client;
var http = require('http');
var fs = require('fs');
var path = require('path');
var childProcess = require('child_process');

var args = process.argv.slice(2);
if (args.length < 6) {
    console.error('usage: node fw_client.js HOST PORT ENDPOINT DEVICE_DIR WORK_DIR SUITKIT_BIN [LIFETIME]');
    process.exit(2);
}
var host = args[0], port = Number(args[1]), endpoint = args[2], deviceDir = args[3],
    workDir = args[4], suitkit = args[5], lifetime = args[6] || '300';
var packageFile = path.join(workDir, 'envelope.suit');
var MAX_PACKAGE = 1024 * 1024;

lwm2m.init({
    client: {
        lifetime: lifetime, version: '1.0', logLevel: 'FATAL', observe: {period: 3000},
        ipProtocol: 'udp4', serverProtocol: 'udp4',
        formats: [{name: 'lightweightm2m/text', value: 1541}], writeFormat: 'lightweightm2m/text'
    }
});

function set(uri, id, value, cb) {
    lwm2m.registry.setResource(uri, id, String(value), cb || function () {});
}

function say(line) {
    process.stdout.write(line + '\n');
}

function download(uri, done) {
    var request;
    try {
        request = http.get(uri, function (res) {
            if (res.statusCode !== 200) {
                res.resume();
                return done(new Error('HTTP ' + res.statusCode), 7);
            }
            var chunks = [], size = 0;
            res.on('data', function (chunk) {
                size += chunk.length;
                if (size > MAX_PACKAGE) {
                    request.destroy();
                    return done(new Error('package over ' + MAX_PACKAGE + ' bytes'), 2);
                }
                chunks.push(chunk);
            });
            res.on('end', function () {
                if (size <= MAX_PACKAGE) {
                    var tmp = packageFile + '.part';
                    fs.writeFileSync(tmp, Buffer.concat(chunks));
                    fs.renameSync(tmp, packageFile);
                    done(null, 0, size);
                }
            });
        });
    } catch (e) {
        return done(e, 7);
    }
    request.on('error', function (e) { done(e, 4); });
}

function onWrite(objectType, objectId, resourceId, value, callback) {
    callback(null);
    if (objectType === '5' && resourceId === '1') {
        if (!value) {
            set('/5/0', 3, 0);
            return;
        }
        set('/5/0', 5, 0);
        set('/5/0', 3, 1);
        say('downloading ' + Date.now() + ' ' + value);
        download(value, function (error, result, size) {
            if (error) {
                say('download failed: ' + error.message);
                set('/5/0', 3, 0);
                set('/5/0', 5, result);
            } else {
                say('downloaded ' + size + ' bytes');
                set('/5/0', 3, 2);
            }
        });
    }
}

function onExecute(objectType, objectId, resourceId, value, callback) {
    if (!(objectType === '5' && resourceId === '2')) {
        return callback(null);
    }
    callback(null);
    set('/5/0', 3, 3);
    say('updating');
    childProcess.execFile(suitkit, ['device', 'install', deviceDir, packageFile],
                          {timeout: 120000}, function (error, stdout, stderr) {
        var result;
        if (!error) {
            result = 1;
        } else if (/digest|signature|integrity/i.test(String(stderr))) {
            result = 5;
        } else {
            result = 8;
        }
        say('install exit ' + (error ? error.code : 0) + ': ' + String(stdout).trim() + ' ' +
            String(stderr).trim());
        set('/5/0', 3, 0);
        set('/5/0', 5, result);
        say('result ' + result);
    });
}

function createObjects(cb) {
    lwm2m.registry.create('/3/0', function () {
        set('/3/0', 0, 'lwm2m-node-lib test');
        set('/3/0', 1, 'fw-client');
        set('/3/0', 2, endpoint.slice(0, 8));
        set('/3/0', 3, 'suitkit-device');
        lwm2m.registry.create('/5/0', function () {
            set('/5/0', 1, '');
            set('/5/0', 3, 0);
            set('/5/0', 5, 0, cb);
        });
    });
}

createObjects(function () {
    lwm2m.register(host, port, '', endpoint, function (error, deviceInfo) {
        if (error) {
            say('registration failed: ' + (error.message || error.name));
            process.exit(1);
        }
        lwm2m.setHandler(deviceInfo.serverInfo, 'write', onWrite);
        lwm2m.setHandler(deviceInfo.serverInfo, 'execute', onExecute);
        say('registered ' + deviceInfo.location);
        function stop() {
            lwm2m.unregister(deviceInfo, function () { process.exit(0); });
            setTimeout(function () { process.exit(0); }, 3000);
        }
        process.on('SIGTERM', stop);
        process.on('SIGINT', stop);
    });
});
