from nfsproxy.cli import main

main()
